/**
 * Thin client for the gateway's /api/v1: bearer auth on every call and errors turned
 * into ApiError with a sentence a person can read.
 */

const FRIENDLY = {
  401: "Your token is invalid or expired. Sign in again.",
  403: "You are not allowed to do that.",
  404: "That was not found. It may have been removed.",
  409: "That conflicts with the current state. Try again.",
  413: "That message is too long.",
  422: "The gateway did not accept that input.",
  429: "Too many requests. Wait a moment and try again.",
  503: "The service is temporarily unavailable. Try again shortly.",
};

export class ApiError extends Error {
  constructor(status, code, detail) {
    const base = FRIENDLY[status] ?? (status ? `The gateway answered with an error (HTTP ${status}).` : detail);
    super(status && detail && !FRIENDLY[status] ? `${base} ${detail}` : base);
    this.status = status;
    this.code = code;
    this.detail = detail;
  }
}

export function createApi(token) {
  const headers = { Authorization: `Bearer ${token}` };

  async function call(method, path, body) {
    let res;
    try {
      res = await fetch(path, {
        method,
        headers: body === undefined ? headers : { ...headers, "Content-Type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
      });
    } catch {
      throw new ApiError(0, "network", "Cannot reach the gateway. Check your connection.");
    }
    const payload = await res.json().catch(() => null);
    if (!res.ok) throw new ApiError(res.status, payload?.error ?? "http_error", payload?.detail ?? "");
    return payload;
  }

  return {
    authHeaders: headers,
    get: (path) => call("GET", path),
    post: (path, body) => call("POST", path, body ?? {}),
  };
}
