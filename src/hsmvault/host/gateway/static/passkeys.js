// hsmvault passkey page (ADR 0011). Runs every WebAuthn ceremony and every key
// operation in this browser: the PRF output and the backup key never leave it. The
// gateway gets WebAuthn responses (without PRF results) and the 93-byte wrapped key.
//
// Wrap format (must match crypto/key_wrap.py, docs/formats/passkey-wrap.md):
//   wrapped = 0x01 || salt (32) || nonce (12) || AES-256-GCM(BK) (32 + 16 tag)
//   KEK     = HKDF-SHA-256(ikm = PRF output, salt, info = "hsmvault/key-wrap/v1" 0x00 "passkey-prf")
//   AAD     = 0x01 || salt || 0x0b || "passkey-prf" || rp_id (UTF-8) || 0x00 || credential id (raw)
"use strict";

const API = "v1/passkeys"; // relative: works behind a path prefix too
const WRAP_VERSION = 1;
const WRAP_SALT_LEN = 32;
const WRAP_NONCE_LEN = 12;
const BACKUP_KEY_LEN = 32;
const WRAPPED_KEY_LEN = 1 + WRAP_SALT_LEN + WRAP_NONCE_LEN + BACKUP_KEY_LEN + 16; // 93
const MIN_PRF_LEN = 32;
const PURPOSE = new TextEncoder().encode("passkey-prf");
const INFO = concat(new TextEncoder().encode("hsmvault/key-wrap/v1"), [0], PURPOSE);
const USERNAME = /^[A-Za-z0-9._@+-]{1,64}$/;

/** A failure with a message meant for the person at the page. */
class PageError extends Error {
  constructor(message) {
    super(message);
    this.name = "PageError";
  }
}

// ------------------------------------------------------------------ bytes

function concat(...parts) {
  const total = parts.reduce((n, p) => n + p.length, 0);
  const out = new Uint8Array(total);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function b64urlEncode(data) {
  const bytes = data instanceof Uint8Array ? data : new Uint8Array(data);
  let bin = "";
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function b64urlDecode(text, what) {
  if (typeof text !== "string" || !/^[A-Za-z0-9_-]*$/.test(text) || text.length % 4 === 1) {
    throw new PageError(`The server sent a malformed ${what}.`);
  }
  const padded = text.replace(/-/g, "+").replace(/_/g, "/") + "==".slice(0, (4 - (text.length % 4)) % 4);
  const bin = atob(padded);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function toHex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function parseBackupKey(text) {
  const hex = text.trim();
  if (!/^[0-9a-fA-F]{64}$/.test(hex)) {
    throw new PageError("A backup key is exactly 64 hex digits (32 bytes): generate one or paste one.");
  }
  const out = new Uint8Array(BACKUP_KEY_LEN);
  for (let i = 0; i < BACKUP_KEY_LEN; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

function sameBytes(a, b) {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

// ------------------------------------------------------------------ key wrap (WebCrypto)

function wrapContext(rpId, rawCredentialId) {
  return concat(new TextEncoder().encode(rpId), [0], rawCredentialId);
}

function associatedData(salt, context) {
  return concat([WRAP_VERSION], salt, [PURPOSE.length], PURPOSE, context);
}

async function deriveKek(prfOutput, salt) {
  if (prfOutput.length < MIN_PRF_LEN) {
    throw new PageError("The passkey's PRF output is shorter than 32 bytes: it cannot wrap a key.");
  }
  const ikm = await crypto.subtle.importKey("raw", prfOutput, "HKDF", false, ["deriveKey"]);
  return crypto.subtle.deriveKey(
    { name: "HKDF", hash: "SHA-256", salt, info: INFO },
    ikm,
    { name: "AES-GCM", length: 256 },
    false,
    ["encrypt", "decrypt"],
  );
}

async function wrapBackupKey(prfOutput, backupKey, rpId, rawCredentialId) {
  const salt = crypto.getRandomValues(new Uint8Array(WRAP_SALT_LEN));
  const nonce = crypto.getRandomValues(new Uint8Array(WRAP_NONCE_LEN));
  const kek = await deriveKek(prfOutput, salt);
  const aad = associatedData(salt, wrapContext(rpId, rawCredentialId));
  const sealed = new Uint8Array(
    await crypto.subtle.encrypt({ name: "AES-GCM", iv: nonce, additionalData: aad, tagLength: 128 }, kek, backupKey),
  );
  const wrapped = concat([WRAP_VERSION], salt, nonce, sealed);
  if (wrapped.length !== WRAPPED_KEY_LEN) throw new PageError("Internal error: wrong wrapped-key length.");
  return wrapped;
}

async function unwrapBackupKey(prfOutput, wrapped, rpId, rawCredentialId) {
  if (wrapped.length !== WRAPPED_KEY_LEN || wrapped[0] !== WRAP_VERSION) {
    throw new PageError(`The stored wrapped key is malformed (expected ${WRAPPED_KEY_LEN} bytes, version 1).`);
  }
  const salt = wrapped.slice(1, 1 + WRAP_SALT_LEN);
  const nonce = wrapped.slice(1 + WRAP_SALT_LEN, 1 + WRAP_SALT_LEN + WRAP_NONCE_LEN);
  const sealed = wrapped.slice(1 + WRAP_SALT_LEN + WRAP_NONCE_LEN);
  const kek = await deriveKek(prfOutput, salt);
  const aad = associatedData(salt, wrapContext(rpId, rawCredentialId));
  try {
    const plain = await crypto.subtle.decrypt(
      { name: "AES-GCM", iv: nonce, additionalData: aad, tagLength: 128 },
      kek,
      sealed,
    );
    return new Uint8Array(plain);
  } catch {
    throw new PageError(
      "The wrapped key did not open with this passkey's PRF output (wrong passkey, salt or relying party, or the stored wrap was changed).",
    );
  }
}

// ------------------------------------------------------------------ gateway API

const session = { token: null, username: null, rpId: null };

const API_ERRORS = {
  400: "The gateway refused a malformed request",
  401: "Your sign-in is missing or expired: sign in again",
  403: "The gateway refused the passkey's response (origin, relying party, challenge, signature, user verification or sign count)",
  404: "Not found",
  409: "The request no longer fits the passkey's state (a used or expired challenge, a changed salt, or a passkey registered already): try again",
  413: "Request too large",
  422: "The gateway refused the request's fields",
  429: "Too many requests: wait a moment",
  503: "The gateway cannot keep passkeys right now",
};

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (session.token) headers.Authorization = `Bearer ${session.token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit",
      cache: "no-store",
    });
  } catch {
    throw new PageError("The gateway cannot be reached.");
  }
  if (response.status === 204) return null;
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    const base = API_ERRORS[response.status] || `The gateway answered ${response.status}`;
    const detail = data && typeof data.detail === "string" ? ` (${data.detail})` : "";
    const error = new PageError(`${base}${detail}.`);
    error.status = response.status;
    throw error;
  }
  if (data === null || typeof data !== "object") throw new PageError("The gateway sent no JSON answer.");
  return data;
}

// ------------------------------------------------------------------ WebAuthn

function webAuthnMessage(error, rpId) {
  switch (error && error.name) {
    case "NotAllowedError":
      return "The passkey request was cancelled, timed out, or no matching passkey is available.";
    case "SecurityError":
      return `This page's address does not belong to the relying party "${rpId}": open it at that host name (an IP address is not a valid relying party).`;
    case "InvalidStateError":
      return "This authenticator already holds a passkey for this account.";
    case "NotSupportedError":
      return "This browser or authenticator does not support what the passkey request needs.";
    case "AbortError":
      return "The passkey request was aborted.";
    default:
      return `The passkey request failed (${error && error.name ? error.name : "error"}).`;
  }
}

async function webAuthn(kind, publicKey, rpId) {
  if (!window.isSecureContext || !window.PublicKeyCredential || !navigator.credentials) {
    throw new PageError("Passkeys need a secure page (https, or http://localhost) in a browser with WebAuthn.");
  }
  try {
    const credential = await navigator.credentials[kind]({ publicKey });
    if (!credential) throw new PageError("The browser returned no passkey.");
    return credential;
  } catch (error) {
    if (error instanceof PageError) throw error;
    throw new PageError(webAuthnMessage(error, rpId));
  }
}

const PRF_UNSUPPORTED =
  "PRF is not supported by this browser or authenticator: this passkey cannot protect a backup key.";

function prfFirst(credential) {
  const prf = credential.getClientExtensionResults().prf;
  const first = prf && prf.results && prf.results.first;
  return first ? new Uint8Array(first) : null;
}

function creationOptions(json, salt) {
  if (!json || !json.rp || !json.user) throw new PageError("The server sent malformed creation options.");
  const options = { ...json };
  options.challenge = b64urlDecode(json.challenge, "challenge");
  options.user = { ...json.user, id: b64urlDecode(json.user.id, "user id") };
  if (Array.isArray(json.excludeCredentials)) {
    options.excludeCredentials = json.excludeCredentials.map((c) => ({ ...c, id: b64urlDecode(c.id, "credential id") }));
  }
  options.extensions = { ...(json.extensions || {}), prf: { eval: { first: salt } } };
  return options;
}

// salts: Map credentialId (b64url) -> PRF input bytes
function requestOptions(json, salts) {
  if (!json) throw new PageError("The server sent malformed request options.");
  const options = { ...json };
  options.challenge = b64urlDecode(json.challenge, "challenge");
  const allow = Array.isArray(json.allowCredentials) ? json.allowCredentials : [];
  options.allowCredentials = allow.map((c) => ({ ...c, id: b64urlDecode(c.id, "credential id") }));
  let prf;
  if (allow.length > 0) {
    const evalByCredential = {};
    for (const c of allow) {
      if (salts.has(c.id)) evalByCredential[c.id] = { first: salts.get(c.id) };
    }
    prf = { evalByCredential };
  } else if (salts.size === 1) {
    prf = { eval: { first: [...salts.values()][0] } };
  } else {
    throw new PageError("The server named no passkey to use.");
  }
  options.extensions = { ...(json.extensions || {}), prf };
  return options;
}

// The response JSON for the server, WITHOUT the PRF results that
// PublicKeyCredential.toJSON() would include: those are the wrapping secret.
function publicExtensionResults(credential, atCreate) {
  const prf = credential.getClientExtensionResults().prf;
  return atCreate && prf && typeof prf.enabled === "boolean" ? { prf: { enabled: prf.enabled } } : {};
}

// The PublicKeyCredential JSON around a ceremony's `response` part.
function credentialJSON(credential, response, atCreate) {
  const json = {
    id: credential.id,
    rawId: b64urlEncode(credential.rawId),
    type: credential.type,
    response,
    clientExtensionResults: publicExtensionResults(credential, atCreate),
  };
  if (credential.authenticatorAttachment) json.authenticatorAttachment = credential.authenticatorAttachment;
  return json;
}

function registrationJSON(credential) {
  const r = credential.response;
  return credentialJSON(credential, {
    clientDataJSON: b64urlEncode(r.clientDataJSON),
    attestationObject: b64urlEncode(r.attestationObject),
    transports: typeof r.getTransports === "function" ? r.getTransports() : [],
  }, true);
}

function authenticationJSON(credential) {
  const r = credential.response;
  const response = {
    clientDataJSON: b64urlEncode(r.clientDataJSON),
    authenticatorData: b64urlEncode(r.authenticatorData),
    signature: b64urlEncode(r.signature),
  };
  if (r.userHandle) response.userHandle = b64urlEncode(r.userHandle);
  return credentialJSON(credential, response, false);
}

/** One assertion ceremony over options from the server: the credential, its PRF output, salt and RP id. */
async function assertWithPrf(optionsBody) {
  let opts;
  try {
    opts = await api("POST", `${API}/authentication/options`, optionsBody);
  } catch (error) {
    if (error.status === 404) {
      throw new PageError(
        optionsBody.credentialId ? "That passkey no longer exists." : "You have no passkey yet: create one first.",
      );
    }
    throw error;
  }
  const json = opts.publicKey;
  if (!opts.prfSalts || typeof opts.prfSalts !== "object") throw new PageError("The server sent no PRF salts.");
  const salts = new Map();
  for (const [id, salt] of Object.entries(opts.prfSalts)) salts.set(id, b64urlDecode(salt, "PRF salt"));
  if (salts.size === 0) throw new PageError("You have no passkey yet: create one first.");
  const rpId = (json && json.rpId) || location.hostname;
  const credential = await webAuthn("get", requestOptions(json, salts), rpId);
  const prf = prfFirst(credential);
  if (!prf) throw new PageError(PRF_UNSUPPORTED);
  const salt = salts.get(credential.id);
  if (!salt) throw new PageError("The browser used a passkey the server did not offer.");
  session.rpId = rpId;
  return { credential, prf, salt, rpId, rawId: new Uint8Array(credential.rawId) };
}

// ------------------------------------------------------------------ page

const $ = (id) => document.getElementById(id);
const SIGNED_IN_BUTTONS = ["create-passkey", "protect-key", "recover"];

function setStatus(state, message) {
  const status = $("status");
  status.dataset.state = state;
  status.textContent = message;
  if (state !== "error") {
    $("error").hidden = true;
    $("error").textContent = "";
  }
}

function showError(message) {
  setStatus("error", "Failed.");
  $("error").textContent = message;
  $("error").hidden = false;
}

function refreshButtons(busy) {
  const signedIn = session.token !== null;
  $("sign-in").disabled = busy;
  $("generate-key").disabled = busy;
  for (const id of SIGNED_IN_BUTTONS) $(id).disabled = busy || !signedIn;
  for (const button of document.querySelectorAll("#passkey-list button")) button.disabled = busy;
}

/** Run one user action: busy state, then a clear success or error message. */
async function action(busyMessage, run) {
  setStatus("busy", busyMessage);
  refreshButtons(true);
  try {
    const done = await run();
    setStatus("ok", done);
  } catch (error) {
    if (error instanceof PageError) showError(error.message);
    else showError(`Unexpected error: ${error && error.name ? error.name : "error"}.`);
    if (error && error.status === 401) signOut();
  } finally {
    refreshButtons(false);
  }
}

function signOut() {
  session.token = null;
  session.username = null;
  $("signed-in-as").hidden = true;
  renderPasskeys([]);
}

function formatTime(value) {
  if (value === null || value === undefined) return "never";
  if (typeof value === "number") return new Date(value * 1000).toISOString().replace(/\.\d+Z$/, "Z");
  return String(value);
}

function renderPasskeys(passkeys) {
  const list = $("passkey-list");
  const choice = $("credential-choice");
  const chosen = choice.value;
  list.replaceChildren();
  choice.replaceChildren(choice.options[0]);
  for (const p of passkeys) {
    const row = document.createElement("tr");
    row.dataset.credentialId = p.credentialId;
    const cells = [p.credentialId, formatTime(p.createdAt), formatTime(p.lastUsedAt), p.hasWrappedKey ? "yes" : "no"];
    for (const text of cells) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.append(cell);
    }
    row.firstChild.classList.add("hex");
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "remove-passkey";
    remove.textContent = "Remove";
    remove.addEventListener("click", () => onRemove(remove, p.credentialId));
    const cell = document.createElement("td");
    cell.append(remove);
    row.append(cell);
    list.append(row);
    const option = document.createElement("option");
    option.value = p.credentialId;
    option.textContent = `passkey ${p.credentialId.slice(0, 12)}…`;
    choice.append(option);
  }
  choice.value = passkeys.some((p) => p.credentialId === chosen) ? chosen : "";
  $("passkey-empty").hidden = passkeys.length > 0;
}

async function loadPasskeys() {
  const data = await api("GET", API);
  if (!Array.isArray(data.passkeys)) throw new PageError("The gateway sent a malformed passkey list.");
  renderPasskeys(data.passkeys);
  return data.passkeys;
}

function chosenCredential() {
  return $("credential-choice").value || null;
}

async function onSignIn(event) {
  event.preventDefault();
  const username = $("username").value.trim();
  await action("Signing in…", async () => {
    if (!USERNAME.test(username)) {
      throw new PageError("A username is 1 to 64 of: letters, digits, . _ @ + -");
    }
    let data;
    try {
      data = await api("POST", `${API}/test-login`, { username });
    } catch (error) {
      if (error.status === 404 || error.status === 405) {
        throw new PageError("Test sign-in is disabled: it exists only on development deployments.");
      }
      throw error;
    }
    if (typeof data.token !== "string") throw new PageError("The gateway sent no token.");
    session.token = data.token;
    session.username = username;
    $("signed-in-as").textContent = `Signed in as ${username} (test account).`;
    $("signed-in-as").hidden = false;
    const passkeys = await loadPasskeys();
    return `Signed in as ${username}: ${passkeys.length} passkey(s).`;
  });
}

async function forgetOnAuthenticator(rpId, credentialId) {
  try {
    if (typeof PublicKeyCredential.signalUnknownCredential === "function") {
      await PublicKeyCredential.signalUnknownCredential({ rpId, credentialId });
    }
  } catch {
    // best effort only
  }
}

async function onCreate() {
  await action("Creating a passkey: follow your browser's prompt…", async () => {
    const keyText = $("backup-key").value.trim();
    const backupKey = keyText ? parseBackupKey(keyText) : null;
    const opts = await api("POST", `${API}/registration/options`, {});
    const salt = b64urlDecode(opts.prfSalt, "PRF salt");
    const json = opts.publicKey;
    const rpId = (json && json.rp && json.rp.id) || location.hostname;
    const credential = await webAuthn("create", creationOptions(json, salt), rpId);
    const rawId = new Uint8Array(credential.rawId);
    const prfState = credential.getClientExtensionResults().prf;
    let prf = prfFirst(credential);
    if (!prf && prfState && prfState.enabled === true) {
      // Some authenticators evaluate PRF only in get(): ask once more, locally (the
      // assertion is not sent anywhere; only its PRF output is used).
      setStatus("busy", "The passkey gave no PRF output at creation: confirm once more…");
      const again = await webAuthn(
        "get",
        {
          challenge: crypto.getRandomValues(new Uint8Array(32)),
          rpId,
          allowCredentials: [{ type: "public-key", id: rawId }],
          userVerification: "required",
          extensions: { prf: { eval: { first: salt } } },
        },
        rpId,
      );
      prf = prfFirst(again);
    }
    if (!prf) {
      await forgetOnAuthenticator(rpId, credential.id);
      throw new PageError(`${PRF_UNSUPPORTED} It was not registered.`);
    }
    let wrappedKey = null;
    if (backupKey) {
      wrappedKey = b64urlEncode(await wrapBackupKey(prf, backupKey, rpId, rawId));
      backupKey.fill(0);
    }
    prf.fill(0);
    const done = await api("POST", `${API}/registration`, { credential: registrationJSON(credential), wrappedKey });
    if (done.credentialId !== credential.id) throw new PageError("The gateway registered a different credential id.");
    session.rpId = rpId;
    await loadPasskeys();
    return wrappedKey
      ? "Passkey created; it protects the backup key shown."
      : "Passkey created. It protects no key yet: use “Protect backup key”.";
  });
}

function onGenerate() {
  const key = crypto.getRandomValues(new Uint8Array(BACKUP_KEY_LEN));
  $("backup-key").value = toHex(key);
  key.fill(0);
  setStatus("ok", "A new backup key was generated in this browser. Keep it safe, then protect it.");
}

async function onProtect() {
  await action("Protecting the backup key: follow your browser's prompt…", async () => {
    const backupKey = parseBackupKey($("backup-key").value);
    const { credential, prf, salt, rpId, rawId } = await assertWithPrf({ credentialId: chosenCredential() });
    const wrapped = await wrapBackupKey(prf, backupKey, rpId, rawId);
    prf.fill(0);
    backupKey.fill(0);
    const done = await api("PUT", `${API}/${encodeURIComponent(credential.id)}/wrapped-key`, {
      credential: authenticationJSON(credential),
      wrappedKey: b64urlEncode(wrapped),
    });
    if (done.credentialId !== credential.id) throw new PageError("The gateway stored the key for another passkey.");
    if (typeof done.prfSalt === "string" && !sameBytes(b64urlDecode(done.prfSalt, "PRF salt"), salt)) {
      throw new PageError("The passkey's salt changed meanwhile: protect the key again.");
    }
    await loadPasskeys();
    return `The backup key is now protected by passkey ${credential.id.slice(0, 12)}….`;
  });
}

async function onRecover() {
  $("recovered-key").textContent = "";
  await action("Recovering the backup key: follow your browser's prompt…", async () => {
    const { credential, prf, salt, rpId, rawId } = await assertWithPrf({ credentialId: chosenCredential() });
    const done = await api("POST", `${API}/authentication`, { credential: authenticationJSON(credential) });
    if (done.credentialId !== credential.id) throw new PageError("The gateway answered for another passkey.");
    if (!sameBytes(b64urlDecode(done.prfSalt, "PRF salt"), salt)) {
      throw new PageError("The passkey's salt changed meanwhile: recover again.");
    }
    if (!done.wrappedKey) throw new PageError("This passkey protects no backup key yet.");
    const backupKey = await unwrapBackupKey(prf, b64urlDecode(done.wrappedKey, "wrapped key"), rpId, rawId);
    prf.fill(0);
    $("recovered-key").textContent = toHex(backupKey);
    backupKey.fill(0);
    await loadPasskeys();
    return "Backup key recovered.";
  });
}

async function onRemove(button, credentialId) {
  if (button.dataset.confirm !== "yes") {
    button.dataset.confirm = "yes";
    button.textContent = "Click again to remove";
    return;
  }
  await action("Removing the passkey…", async () => {
    await api("DELETE", `${API}/${encodeURIComponent(credentialId)}`);
    await loadPasskeys();
    return "Passkey removed. (The authenticator may still list it; it no longer opens anything here.)";
  });
}

function start() {
  $("sign-in-form").addEventListener("submit", onSignIn);
  $("create-passkey").addEventListener("click", onCreate);
  $("generate-key").addEventListener("click", onGenerate);
  $("protect-key").addEventListener("click", onProtect);
  $("recover").addEventListener("click", onRecover);
  refreshButtons(false);
  if (!window.isSecureContext || !window.PublicKeyCredential) {
    showError("Passkeys need a secure page (https, or http://localhost) in a browser with WebAuthn.");
    return;
  }
  setStatus("ready", "Ready: sign in with a test account.");
}

start();
