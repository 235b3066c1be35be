// The query API as the page uses it: the key as `Authorization: Bearer`, ETags remembered per
// URL so that an unchanged answer costs a 304, and errors that say what to do.

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }

  // What the user can do about it.
  get advice() {
    if (this.status === 401) return 'The key is unknown or was revoked: sign in with another key.';
    if (this.status === 403) return `This key may not read this: ${this.message}`;
    if (this.status === 422 || this.status === 400) return this.message;
    if (this.status === 0) return 'The query API cannot be reached: is it running?';
    if (this.status === 502) return 'The database did not answer: is ClickHouse running? (deploy/local/stack status)';
    if (this.status === 503) return 'The query API is busy; the next refresh retries.';
    if (this.status === 504) return 'The query took too long: narrow the window or the filters.';
    return `The query API answered ${this.status}: ${this.message}`;
  }
}

export class Api {
  constructor(key) {
    this.key = key;
    // url → { etag, data, asOf }: what a 304 stands for.
    this.seen = new Map();
    this.stats = { requests: 0, notModified: 0 };
  }

  async request(url, init = {}) {
    const headers = { Authorization: `Bearer ${this.key}`, ...(init.headers || {}) };
    let response;
    try {
      this.stats.requests += 1;
      response = await fetch(url, { ...init, headers, cache: 'no-store' });
    } catch (error) {
      if (error.name === 'AbortError') throw error;
      throw new ApiError(0, String(error));
    }
    return response;
  }

  static async fail(response) {
    let detail = response.statusText;
    try {
      const body = await response.json();
      if (typeof body.detail === 'string') detail = body.detail;
    } catch {
      // Not JSON: the status says enough.
    }
    throw new ApiError(response.status, detail);
  }

  // GET `url`, conditional on the last answer's ETag. Returns { data, asOf, fresh }: `asOf`
  // is when the server computed the answer (its `Age`), `fresh` whether it changed.
  async get(url, signal) {
    const last = this.seen.get(url);
    const headers = last ? { 'If-None-Match': last.etag } : {};
    const response = await this.request(url, { headers, signal });
    const age = Number(response.headers.get('Age') || 0) * 1000;
    if (response.status === 304 && last) {
      this.stats.notModified += 1;
      last.asOf = Date.now() - age;
      return { data: last.data, asOf: last.asOf, fresh: false };
    }
    if (!response.ok) await Api.fail(response);
    const data = await response.json();
    const etag = response.headers.get('ETag');
    const entry = { etag, data, asOf: Date.now() - age };
    if (etag) this.seen.set(url, entry);
    return { data, asOf: entry.asOf, fresh: true };
  }

  async post(url, body, signal) {
    const response = await this.request(url, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
      signal,
    });
    if (!response.ok) await Api.fail(response);
    return { data: await response.json(), asOf: Date.now(), fresh: true };
  }

  workspaces() {
    return this.get('/api/me/workspaces');
  }
}

export function workspacePath(ws) {
  return `/api/accounts/${encodeURIComponent(ws.account_id)}/workspaces/${encodeURIComponent(ws.workspace_id)}`;
}
