// The API over fetch: the session rides in an HttpOnly cookie; changes carry the CSRF token.
export class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail || `HTTP ${status}`);
    this.status = status;
    this.field = problem?.field;
    this.errors = problem?.errors || (problem?.field ? [{ field: problem.field, message: problem.detail }] : []);
  }
}

function csrf() {
  const found = document.cookie.split("; ").find((c) => c.startsWith("shanzhi_csrf="));
  return found ? found.slice("shanzhi_csrf=".length) : "";
}

// A body that is text goes as it is written (YAML; JSON is YAML), an object as JSON.
export async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  const written = typeof body === "string";
  if (body !== undefined) headers["Content-Type"] = written ? "application/yaml" : "application/json";
  if (method !== "GET") headers["X-CSRF-Token"] = csrf();
  const response = await fetch(`/api/v1${path}`, {
    method, headers, credentials: "same-origin", body: body === undefined || written ? body : JSON.stringify(body),
  });
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  if (!response.ok) {
    if (response.status === 401 && !path.startsWith("/auth/login")) window.dispatchEvent(new Event("shanzhi:signed-out"));
    throw new ApiError(response.status, typeof data === "object" ? data : { detail: text });
  }
  return data;
}

export const get = (path) => api("GET", path);
export const post = (path, body = {}) => api("POST", path, body);
export const q = encodeURIComponent;
