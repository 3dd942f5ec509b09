// The server's JSON API (cnnserve.v1 in protobuf's JSON mapping, under /v1/), same origin only.
//
// The bearer token, when the server asks for one, lives in this module's memory and nowhere else: not in
// localStorage, sessionStorage, a cookie or the URL, so closing or reloading the tab forgets it.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = "ApiError";
    this.status = status; // the HTTP status
    this.code = code; // the status name, e.g. NOT_FOUND, or "" when the server gave none
  }
}

async function readJson(response) {
  const text = await response.text();
  if (!text) return {};
  try {
    return JSON.parse(text);
  } catch {
    return { error: `${response.status} ${response.statusText}: the answer is not JSON` };
  }
}

export class Api {
  #token = null;
  #prompt = null;

  // askToken(reason) resolves to the token the user typed, or null when they cancelled.
  constructor(askToken, onTokenChange = () => {}) {
    this.askToken = askToken;
    this.onTokenChange = onTokenChange;
  }

  get hasToken() {
    return this.#token !== null;
  }

  forgetToken() {
    this.#token = null;
    this.onTokenChange(false);
  }

  // One prompt at a time, however many calls were refused together.
  #ask(reason) {
    if (this.#prompt === null) {
      this.#prompt = this.askToken(reason).finally(() => {
        this.#prompt = null;
      });
    }
    return this.#prompt;
  }

  async call(method, path, body) {
    for (;;) {
      const sent = this.#token;
      const headers = { Accept: "application/json" };
      if (body !== undefined) headers["Content-Type"] = "application/json";
      if (sent !== null) headers.Authorization = `Bearer ${sent}`;
      let response;
      try {
        response = await fetch(path, {
          method,
          headers,
          body: body === undefined ? undefined : JSON.stringify(body),
          cache: "no-store",
          credentials: "omit",
          redirect: "error",
        });
      } catch (error) {
        throw new ApiError(0, "UNAVAILABLE", `the server did not answer (${error.message})`);
      }
      const payload = await readJson(response);
      if (response.ok) return payload;
      const message = payload.error || `${response.status} ${response.statusText}`;
      if (response.status === 401) {
        if (this.#token !== sent) continue; // another call got a new token meanwhile
        const reason = sent === null ? message : `The server refused this token: ${message}`;
        const token = await this.#ask(reason);
        if (token === null) throw new ApiError(401, "UNAUTHENTICATED", message);
        this.#token = token;
        this.onTokenChange(true);
        continue;
      }
      throw new ApiError(response.status, payload.code || "", message);
    }
  }
}

// Bytes as base64 (protobuf's JSON mapping of `bytes`), in slices so big images do not overflow the stack.
export function toBase64(bytes) {
  let text = "";
  for (let start = 0; start < bytes.length; start += 0x8000) {
    text += String.fromCharCode.apply(null, bytes.subarray(start, start + 0x8000));
  }
  return btoa(text);
}
