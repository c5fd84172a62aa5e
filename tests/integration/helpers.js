// Shared plumbing for the integration tests: start boomerang-primary on an
// ephemeral loopback port, talk gRPC to it with @grpc/grpc-js, and clean up
// whatever was started, by PID.
//
// Rules the suite follows (DESIGN.md, STYLE.md):
//  - no fixed sleeps: every wait is waitFor(cond) with a deadline, polling with
//    a small backoff;
//  - every process started here is stopped by its PID (SIGTERM, then SIGKILL
//    after a deadline), in an after hook and, as a last resort, on exit;
//  - u64/i64 values travel as decimal strings (proto-loader longs: String) and
//    are compared as BigInt, so txids and int64 extremes stay exact.
//
// Environment:
//   BOOMERANG_BIN           directory holding boomerang-primary (required by `make itest`;
//                           without it a checkout with no build skips the tests)
//   BOOMERANG_SEED          replay a randomized test (the seed is printed as a diagnostic)
//   BOOMERANG_CRASH_ROUNDS  kill -9 rounds in primary_crash (default 10)
//   BOOMERANG_GC_TX         transactions per client in primary_group_commit (default 200)
//   BOOMERANG_GC_BUDGET_MS  time budget of that load (default 150000)
//   BOOMERANG_KEEP_TMP=1    keep the temp directories (databases, logs, certs) for a post-mortem

import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, test } from 'node:test';

import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';

const here = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(here, '..', '..');
export const PROTO = path.join(REPO, 'proto', 'boomerang.proto');
export const { status: Code, Metadata } = grpc;
export { grpc };

// ---------------------------------------------------------------- binaries

/** Absolute path of a boomerang binary, from $BOOMERANG_BIN (else <repo>/bin). */
export function binPath(name = 'boomerang-primary') {
    const dir = process.env.BOOMERANG_BIN || path.join(REPO, 'bin');
    return path.join(path.resolve(dir), name);
}

/** True when the binary exists and is executable. */
export function haveBinary(name = 'boomerang-primary') {
    try {
        fs.accessSync(binPath(name), fs.constants.X_OK);
        return true;
    } catch {
        return false;
    }
}

/**
 * True when the tests should be skipped for want of a binary: only when
 * $BOOMERANG_BIN is unset (a checkout without a build). With it set, as
 * `make itest` runs, a missing binary fails in startPrimary instead.
 */
export function skipNoBinary() {
    return !process.env.BOOMERANG_BIN && !haveBinary();
}

/** A fresh temporary directory under os.tmpdir(), removed when the process ends. */
export function makeTmpDir(prefix = 'boomerang-itest-') {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
    tmpDirs.push(dir);
    return dir;
}

const tmpDirs = [];

// ---------------------------------------------------------------- waiting

/**
 * Poll cond() until it returns a truthy value, and return that value.
 * Polls with an exponential backoff (2 ms doubling up to 50 ms) and fails after
 * timeoutMs with `what` and the last error cond() threw. An error with
 * `.fatal = true` thrown by cond() stops the wait at once.
 */
export async function waitFor(cond, { timeoutMs = 5000, what = 'condition' } = {}) {
    const deadline = Date.now() + timeoutMs;
    let backoffMs = 2;
    let lastErr = null;
    for (;;) {
        try {
            const v = await cond();
            if (v) return v;
        } catch (e) {
            if (e && e.fatal) throw e;
            lastErr = e;
        }
        if (Date.now() >= deadline) {
            const why = lastErr ? `; last error: ${lastErr.message || lastErr}` : '';
            throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${why}`);
        }
        await pause(backoffMs); // poll backoff, not a fixed sleep
        backoffMs = Math.min(backoffMs * 2, 50);
    }
}

/** Resolve after ms; only for backoff between polls and for deliberate random delays. */
export function pause(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms)); // backoff / delay primitive
}

/** Reject with a timeout error unless p settles within ms. */
export function withDeadline(p, ms, what = 'operation') {
    let timer;
    const guard = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms); // deadline, not a delay
    });
    return Promise.race([p, guard]).finally(() => clearTimeout(timer));
}

function fatal(msg) {
    const e = new Error(msg);
    e.fatal = true;
    return e;
}

// ---------------------------------------------------------------- processes

const live = new Set(); // every child still running, for the exit-time safety net
const allStarted = []; // every child ever started, for the sanitizer scan in stopAll()
let testProcs = null; // processes started during the current itest(), for diagnostics

/**
 * Start boomerang-primary. Options:
 *   dir   directory for the database (default: a fresh temp dir)
 *   db    database path (default: dir/test.db); reuse it to restart on the same db
 *   args  extra command-line flags
 *   env   extra environment variables
 *   viaEnv  pass --db and --listen through BOOMERANG_DB and BOOMERANG_LISTEN
 *   timeoutMs  how long to wait for the "listening on" line
 * Resolves to a handle: { pid, port, addr, dir, db, stderr(), tail(), stop(), kill9(), exited }.
 */
export async function startPrimary({ dir, db, args = [], env = {}, viaEnv = false, timeoutMs = 15000 } = {}) {
    if (!dir) dir = db ? path.dirname(db) : makeTmpDir();
    if (!db) db = path.join(dir, 'test.db');
    // viaEnv: give --db and --listen as BOOMERANG_DB / BOOMERANG_LISTEN instead.
    const argv = viaEnv ? [...args] : ['--db', db, '--listen', '127.0.0.1:0', ...args];
    if (viaEnv) env = { BOOMERANG_DB: db, BOOMERANG_LISTEN: '127.0.0.1:0', ...env };
    const childEnv = {};
    for (const [k, v] of Object.entries(process.env)) {
        if (!k.startsWith('BOOMERANG_')) childEnv[k] = v; // flags come only from the test
    }
    Object.assign(childEnv, env);
    const proc = spawn(binPath('boomerang-primary'), argv, {
        env: childEnv,
        stdio: ['ignore', 'pipe', 'pipe'],
    });
    const h = new ProcHandle(proc, 'boomerang-primary', argv);
    h.server = true; // expected to run until signalled, and to exit 0 on SIGTERM
    h.dir = dir;
    h.db = db;
    const m = await waitFor(
        () => {
            const found = /listening on 127\.0\.0\.1:(\d+) \((?:h2c|tls)\)/.exec(h.stderr());
            if (found) return found;
            if (h.exitStatus) {
                throw fatal(`primary exited before listening (${fmtExit(h.exitStatus)})\n${h.tail()}`);
            }
            return null;
        },
        { timeoutMs, what: '"listening on" from boomerang-primary' },
    ).catch(async (e) => {
        await h.kill9();
        e.message += `\n--- stderr ---\n${h.tail()}`;
        throw e;
    });
    h.port = Number(m[1]);
    h.addr = `127.0.0.1:${h.port}`;
    return h;
}

/** Spawn any process with captured output and PID-based cleanup (used for helpers like python). */
export function spawnTracked(cmd, argv, opts = {}) {
    const proc = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'], ...opts });
    return new ProcHandle(proc, path.basename(cmd), argv);
}

class ProcHandle {
    constructor(proc, name, argv) {
        this.proc = proc;
        this.pid = proc.pid;
        this.name = name;
        this.argv = argv;
        this.out = [];
        this.err = [];
        this.exitStatus = null;
        this.exited = new Promise((resolve) => {
            proc.on('exit', (code, signal) => {
                this.exitStatus = { code, signal };
                live.delete(this);
                resolve(this.exitStatus);
            });
            proc.on('error', (e) => {
                this.err.push(Buffer.from(`spawn error: ${e.message}\n`));
                this.exitStatus = { code: -1, signal: null, error: e };
                live.delete(this);
                resolve(this.exitStatus);
            });
        });
        proc.stdout.on('data', (d) => this.out.push(d));
        proc.stderr.on('data', (d) => this.err.push(d));
        live.add(this);
        allStarted.push(this);
        if (testProcs) testProcs.push(this);
    }

    stdout() {
        return Buffer.concat(this.out).toString('utf8');
    }

    stderr() {
        return Buffer.concat(this.err).toString('utf8');
    }

    /** The last lines of stderr, for failure messages. */
    tail(lines = 40) {
        const all = this.stderr().split('\n');
        return all.slice(-lines).join('\n');
    }

    /** Send a signal to this PID, ignoring "already gone". */
    signal(sig) {
        if (this.exitStatus) return;
        this.signalled = true;
        try {
            process.kill(this.pid, sig);
        } catch (e) {
            if (e.code !== 'ESRCH') throw e;
        }
    }

    /** SIGTERM, then SIGKILL if it has not exited within graceMs. Resolves to {code, signal}. */
    async stop(graceMs = 10000) {
        if (this.exitStatus) return this.exitStatus;
        this.signal('SIGTERM');
        try {
            await withDeadline(this.exited, graceMs, `${this.name} pid ${this.pid} SIGTERM`);
        } catch {
            this.killedHard = true;
            this.signal('SIGKILL');
            await this.exited;
        }
        return this.exitStatus;
    }

    /** SIGKILL at once and wait for the exit. */
    async kill9() {
        this.signal('SIGKILL');
        return this.exited;
    }
}

function fmtExit(s) {
    if (!s) return 'running';
    return s.signal ? `signal ${s.signal}` : `exit code ${s.code}`;
}
export { fmtExit };

/** A sanitizer report or crash marker in a process's stderr, or null. */
export function sanitizerReport(h) {
    const text = h.stderr();
    const m = /(ERROR: (Address|Leak|Thread|Memory)Sanitizer|runtime error:|AddressSanitizer:DEADLYSIGNAL)/.exec(text);
    return m ? text.slice(Math.max(0, m.index - 200), m.index + 4000) : null;
}

/**
 * Stop every process this file started (SIGTERM then SIGKILL), by PID.
 * Throws if a server started by startPrimary needed SIGKILL, exited non-zero on
 * SIGTERM or exited without being told to (a crash), or if any process printed
 * a sanitizer report. Each process is judged once, so calling it again is harmless.
 */
export async function stopAll() {
    const problems = [];
    for (const h of [...live]) {
        const st = await h.stop();
        if (!h.server) continue;
        if (h.killedHard) problems.push(`${h.name} pid ${h.pid} ignored SIGTERM\n${h.tail()}`);
        else if (st.code !== 0) problems.push(`${h.name} pid ${h.pid}: ${fmtExit(st)} on SIGTERM\n${h.tail()}`);
    }
    for (const h of allStarted) {
        if (judged.has(h)) continue;
        judged.add(h);
        if (h.server && !h.signalled) problems.push(`${h.name} pid ${h.pid} exited on its own: ${fmtExit(h.exitStatus)}\n${h.tail()}`);
        const rep = sanitizerReport(h);
        if (rep) problems.push(`${h.name} pid ${h.pid} sanitizer report:\n${rep}`);
    }
    armExitWatchdog();
    if (problems.length) throw new Error(problems.join('\n\n'));
}

const judged = new WeakSet(); // handles stopAll() has already checked

// Every file that imports this module gets the cleanup, whether or not it
// registers its own after(stopAll) (calling stopAll twice is harmless).
after(() => stopAll(), { timeout: 60000 });

// After the file's cleanup nothing should keep the test process alive. If
// something does (a leaked socket, timer or child pipe), node:test would wait
// forever; instead, name the handles and exit non-zero after a grace period.
let watchdogArmed = false;
function armExitWatchdog(graceMs = 30000) {
    if (watchdogArmed) return;
    watchdogArmed = true;
    const timer = setTimeout(() => { // watchdog delay, unref'd: never keeps the process alive
        const handles = process._getActiveHandles().map(describeHandle);
        process.stderr.write(`itest: process still alive ${graceMs} ms after cleanup; handles: ${handles.join(', ')}\n`);
        process.exit(70);
    }, graceMs);
    timer.unref();
}

function describeHandle(h) {
    const name = h?.constructor?.name || typeof h;
    if (h && typeof h.remoteAddress === 'string') return `${name}(${h.localPort}->${h.remoteAddress}:${h.remotePort})`;
    if (h && h.pid) return `${name}(pid ${h.pid})`;
    if (h && h.fd !== undefined) return `${name}(fd ${h.fd})`;
    return name;
}

// Last-resort cleanup: SIGKILL by PID whatever is still running, and remove temp dirs.
process.on('exit', () => {
    for (const h of live) {
        try {
            process.kill(h.pid, 'SIGKILL');
        } catch {
            /* already gone */
        }
    }
    if (!process.env.BOOMERANG_KEEP_TMP) {
        for (const d of tmpDirs) fs.rmSync(d, { recursive: true, force: true });
    }
});

/**
 * node:test's test() plus diagnostics: on failure, the stderr tail of every
 * process started during the test is appended to the error message.
 * Every test gets a timeout (opts.timeout, default 60 s).
 */
export function itest(name, opts, fn) {
    if (typeof opts === 'function') {
        fn = opts;
        opts = {};
    }
    const o = { timeout: 60000, ...opts };
    if (skipNoBinary()) o.skip = `no ${binPath()} (set BOOMERANG_BIN)`;
    return test(name, o, async (t) => {
        const mine = [];
        testProcs = mine;
        try {
            await fn(t);
        } catch (e) {
            // Processes this test started, plus the file's shared ones still running.
            const procs = [...new Set([...mine, ...[...live].filter((h) => h.server)])];
            const diag = procs
                .map((h) => `--- ${h.name} pid ${h.pid} (${fmtExit(h.exitStatus)}) stderr tail ---\n${h.tail()}`)
                .join('\n');
            if (diag && e && typeof e === 'object') {
                try {
                    e.message = `${e.message}\n${diag}`;
                } catch {
                    t.diagnostic(diag);
                }
            }
            throw e;
        } finally {
            testProcs = null;
        }
    });
}

// ---------------------------------------------------------------- gRPC client

let pkgCache = null;

/** The loaded boomerang.v1 package (proto-loader: keepCase, longs as String, oneofs). */
export function protoPackage() {
    if (!pkgCache) {
        const def = protoLoader.loadSync(PROTO, {
            keepCase: true,
            longs: String,
            enums: String,
            defaults: true,
            oneofs: true,
        });
        pkgCache = grpc.loadPackageDefinition(def).boomerang.v1;
    }
    return pkgCache;
}

/**
 * A Primary client with promise methods.
 *   addr     "127.0.0.1:PORT"
 *   creds    channel credentials (default insecure, i.e. h2c)
 *   token    bearer token sent as `authorization: Bearer <token>` on every call
 *   separate own TCP connection (grpc.use_local_subchannel_pool), not shared with other clients
 *   options  extra channel options
 */
export function makeClient(addr, { creds, token, separate = true, options = {} } = {}) {
    const { Primary } = protoPackage();
    const chanOpts = {
        'grpc.max_receive_message_length': 64 * 1024 * 1024,
        'grpc.max_send_message_length': 64 * 1024 * 1024,
        ...(separate ? { 'grpc.use_local_subchannel_pool': 1 } : {}),
        ...options,
    };
    const raw = new Primary(addr, creds || grpc.credentials.createInsecure(), chanOpts);
    return new PrimaryClient(raw, token);
}

class PrimaryClient {
    constructor(raw, token) {
        this.raw = raw;
        this.token = token;
    }

    metadata(extra) {
        const md = new Metadata();
        if (this.token !== undefined) md.set('authorization', `Bearer ${this.token}`);
        for (const [k, v] of Object.entries(extra || {})) md.set(k, v);
        return md;
    }

    call(method, req, { deadlineMs = 15000, metadata } = {}) {
        return new Promise((resolve, reject) => {
            this.raw[method](
                req,
                this.metadata(metadata),
                { deadline: Date.now() + deadlineMs },
                (err, res) => (err ? reject(err) : resolve(res)),
            );
        });
    }

    /** Execute(req). req.statements may hold plain SQL strings or stmt() objects. */
    execute(req, opts) {
        const r = { ...req };
        if (r.statements) r.statements = r.statements.map((s) => (typeof s === 'string' ? { sql: s } : s));
        return this.call('Execute', r, opts);
    }

    status(req = {}, opts) {
        return this.call('Status', req, opts);
    }

    /** Send raw bytes as the Execute request (for malformed-input tests). Resolves to the raw reply. */
    rawExecute(bytes, { deadlineMs = 10000 } = {}) {
        return new Promise((resolve, reject) => {
            this.raw.makeUnaryRequest(
                '/boomerang.v1.Primary/Execute',
                (b) => b,
                (b) => b,
                bytes,
                this.metadata(),
                { deadline: Date.now() + deadlineMs },
                (err, res) => (err ? reject(err) : resolve(res)),
            );
        });
    }

    /** Resolve when the channel is READY, or reject after ms. */
    ready(ms = 5000) {
        return new Promise((resolve, reject) => {
            this.raw.waitForReady(Date.now() + ms, (err) => (err ? reject(err) : resolve()));
        });
    }

    close() {
        this.raw.close();
    }
}

// ---------------------------------------------------------------- values

/** Builders for boomerang.v1.Value. Integers may be given as BigInt, number or decimal string. */
export const V = {
    null: () => ({ null: true }),
    int: (x) => ({ integer: String(x) }),
    real: (x) => ({ real: x }),
    text: (s) => ({ text: s }),
    blob: (b) => ({ blob: Buffer.from(b) }),
};

/** Convert a JS value to a Value: bigint -> integer, number -> real (integer-valued -> integer). */
export function toValue(x) {
    if (x === null || x === undefined) return V.null();
    if (typeof x === 'bigint') return V.int(x);
    if (typeof x === 'number') return Number.isInteger(x) && !Object.is(x, -0) ? V.int(x) : V.real(x);
    if (typeof x === 'string') return V.text(x);
    if (Buffer.isBuffer(x) || x instanceof Uint8Array) return V.blob(x);
    if (typeof x === 'boolean') return V.int(x ? 1 : 0);
    throw new Error(`no Value for ${typeof x}`);
}

/** Convert a received Value to JS: integer -> BigInt, real -> number, text, blob -> Buffer, NULL -> null. */
export function fromValue(v) {
    if (!v || !v.kind || v.kind === 'null') return null;
    switch (v.kind) {
        case 'integer':
            return BigInt(v.integer);
        case 'real':
            return v.real;
        case 'text':
            return v.text;
        case 'text_bytes': // TEXT holding NUL bytes (protobuf-c cannot carry those as a string)
            return Buffer.from(v.text_bytes).toString('utf8');
        case 'blob':
            return Buffer.from(v.blob);
        default:
            throw new Error(`unknown Value kind ${v.kind}`);
    }
}

/** A Statement: sql with positional args (JS values or Value objects) and named args {name: value}. */
export function stmt(sql, args = [], named = null) {
    const asValue = (x) => (x && typeof x === 'object' && !Buffer.isBuffer(x) && !(x instanceof Uint8Array) ? x : toValue(x));
    const s = { sql, args: args.map(asValue) };
    if (named) s.named_args = Object.entries(named).map(([name, value]) => ({ name, value: asValue(value) }));
    return s;
}

/** Rows of a StatementResult as arrays of JS values. */
export function rowsOf(result) {
    return result.rows.map((r) => r.values.map(fromValue));
}

/** The single value of a one-row, one-column result. */
export function scalar(result) {
    const rows = rowsOf(result);
    if (rows.length !== 1 || rows[0].length !== 1) {
        throw new Error(`expected one row of one column, got ${JSON.stringify(rows, jsonReplacer)}`);
    }
    return rows[0][0];
}

/** Throw with the statement error if any result failed; return the results. */
export function okResults(res) {
    res.results.forEach((r, i) => {
        if (r.error) throw new Error(`statement ${i} failed: ${r.error.code} ${r.error.message}`);
    });
    return res.results;
}

/** Execute one AUTOCOMMIT statement and return its result, throwing on a statement error. */
export async function exec1(client, sql, args = [], opts) {
    const res = await client.execute({ statements: [stmt(sql, args)] }, opts);
    return okResults(res)[0];
}

/** Expect a promise to fail with the given gRPC status code(s). Returns the error. */
export async function expectCode(p, codes, what = 'call') {
    const want = Array.isArray(codes) ? codes : [codes];
    let err = null;
    try {
        const res = await p;
        err = new Error(`${what}: expected gRPC status ${want.map(codeName).join(' or ')}, got OK: ${JSON.stringify(res, jsonReplacer).slice(0, 500)}`);
        err.unexpectedOk = true;
    } catch (e) {
        if (!want.includes(e.code)) {
            throw new Error(`${what}: expected gRPC status ${want.map(codeName).join(' or ')}, got ${codeName(e.code)}: ${e.details || e.message}`);
        }
        return e;
    }
    throw err;
}

export function codeName(c) {
    const n = Object.entries(Code).find(([, v]) => v === c);
    return n ? `${n[0]}(${c})` : String(c);
}

/** JSON.stringify replacer that prints BigInt and Buffers readably. */
export function jsonReplacer(_k, v) {
    if (typeof v === 'bigint') return `${v}n`;
    if (v && v.type === 'Buffer' && Array.isArray(v.data)) {
        return v.data.length > 32 ? `<blob ${v.data.length} bytes>` : `<blob ${Buffer.from(v.data).toString('hex')}>`;
    }
    return v;
}

// ---------------------------------------------------------------- misc

/** Run a command synchronously (openssl, python), throwing with its output on failure. */
export function run(cmd, argv, opts = {}) {
    try {
        return execFileSync(cmd, argv, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 60000, ...opts });
    } catch (e) {
        throw new Error(`${cmd} ${argv.join(' ')} failed: ${e.message}\n${e.stdout || ''}\n${e.stderr || ''}`);
    }
}

/** Deterministic pseudo-random generator (mulberry32) so failures can be replayed from a seed. */
export function rng(seed) {
    let a = seed >>> 0;
    return () => {
        a = (a + 0x6d2b79f5) >>> 0;
        let t = a;
        t = Math.imul(t ^ (t >>> 15), t | 1);
        t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
        return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
}

/** The seed for randomized tests: $BOOMERANG_SEED or the clock, always printed by the caller. */
export function testSeed() {
    return process.env.BOOMERANG_SEED ? Number(process.env.BOOMERANG_SEED) : Date.now() % 1000000007;
}

// ---------------------------------------------------------------- replicas
//
// boomerang-replica and the read-only tools built from tests/tools: sqlq (rows
// as JSON lines, database checksums) and bankcheck (bank-invariant reader).

import assertStrict from 'node:assert/strict';
import http from 'node:http';

/**
 * Start boomerang-replica following primary P (a startPrimary handle, or an
 * "http://HOST:PORT" URL) into the file `replica`, its HTTP endpoint on an
 * ephemeral port. Resolves to a handle with .httpPort and .replica once it
 * listens. It is a server: stopAll() expects it to exit 0 on SIGTERM.
 */
export async function startReplica(P, replica, { args = [], env = {}, timeoutMs = 15000 } = {}) {
    const url = typeof P === 'string' ? P : `http://${P.addr}`;
    const argv = ['--primary', url, '--replica', replica, '--listen', '127.0.0.1:0', ...args];
    const childEnv = {};
    for (const [k, v] of Object.entries(process.env)) {
        if (!k.startsWith('BOOMERANG_')) childEnv[k] = v; // flags come only from the test
    }
    Object.assign(childEnv, env);
    const h = spawnTracked(binPath('boomerang-replica'), argv, { env: childEnv });
    h.server = true;
    h.replica = replica;
    const m = await waitFor(
        () => {
            const found = /listening on 127\.0\.0\.1:(\d+) \(http\)/.exec(h.stderr());
            if (found) return found;
            if (h.exitStatus) throw fatal(`replica exited before listening (${fmtExit(h.exitStatus)})\n${h.tail()}`);
            return null;
        },
        { timeoutMs, what: '"listening on" from boomerang-replica' },
    ).catch(async (e) => {
        await h.kill9();
        e.message += `\n--- stderr ---\n${h.tail()}`;
        throw e;
    });
    h.httpPort = Number(m[1]);
    return h;
}

/** GET a path of a replica's (or any) HTTP/1.1 endpoint on 127.0.0.1:port: { status, body }. No keep-alive. */
export function httpGetPort(port, p, timeoutMs = 5000) {
    return new Promise((resolve, reject) => {
        const req = http.get({ host: '127.0.0.1', port, path: p, agent: false, timeout: timeoutMs }, (res) => {
            const chunks = [];
            res.on('data', (d) => chunks.push(d));
            res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks).toString('utf8') }));
            res.on('error', reject);
        });
        req.on('timeout', () => req.destroy(new Error(`GET ${p}: timeout`)));
        req.on('error', reject);
    });
}

/** A replica's GET /v1/status, parsed. */
export async function replicaStatus(R) {
    const r = await httpGetPort(R.httpPort, '/v1/status');
    if (r.status !== 200) throw new Error(`GET /v1/status: ${r.status} ${r.body}`);
    return JSON.parse(r.body);
}

/**
 * Wait until replica R has applied head `st` (a Status of the primary, or
 * undefined: ask client c for one) of the same database id and is LIVE.
 * Resolves to the primary Status it waited for.
 */
export async function waitReplicaAt(R, c, { st, timeoutMs = 30000, what = 'the replica to converge' } = {}) {
    if (!st) st = await c.status();
    await waitFor(
        async () => {
            if (R.exitStatus) throw fatal(`${what}: replica exited (${fmtExit(R.exitStatus)})\n${R.tail()}`);
            const s = await replicaStatus(R);
            return s.database_id === st.database_id && BigInt(s.applied_txid) >= BigInt(st.head_txid) && s.state === 'LIVE' ? s : null;
        },
        { timeoutMs, what: `${what} (primary ${st.database_id} at ${st.head_txid})` },
    );
    return st;
}

/** Rows of read-only queries on a database file, through sqlq: one JSON text line per row. */
export function sqlqLines(db, ...sql) {
    const out = run(binPath('sqlq'), [db, ...sql], { maxBuffer: 1024 * 1024 * 1024 });
    return out.split('\n').filter((l) => l.length > 0);
}

/** The same, parsed (integers beyond 2^53 lose precision: compare lines for exactness). */
export function sqlqRows(db, ...sql) {
    return sqlqLines(db, ...sql).map((l) => JSON.parse(l));
}

/** sqlq --checksum: { page_size, db_pages, checksum (decimal string) }, page 1's cookie minus delta. */
export function sqlqChecksum(db, delta = 0) {
    return JSON.parse(run(binPath('sqlq'), ['--checksum', db, String(delta)]).trim());
}

/**
 * The schema-cookie delta of a replica at status s (replica/apply.c, "Schema
 * cookies"): the last field of the position file's "cur"/"next" line for the
 * replica's database id and applied txid. sqlqChecksum(replica, delta) then
 * equals the primary's checksum at that txid.
 */
export function replicaCookieDelta(replica, s) {
    const text = fs.readFileSync(`${replica}-boomerang/position`, 'utf8');
    const line = text
        .split('\n')
        .map((l) => l.trim().split(/\s+/))
        .find((f) => (f[0] === 'cur' || f[0] === 'next') && f[1] === (s.database_id || '-') && f[3] === String(s.applied_txid));
    if (!line) throw new Error(`no position line for ${s.database_id} at ${s.applied_txid}:\n${text}`);
    return Number(line[line.length - 1]);
}

/**
 * Start a bankcheck reader (tests/tools/bankcheck.c) on database `db`:
 * `states` is the list of [sum, count] it may see, in history order. reopen
 * and holdMs are its --reopen and --hold-ms. Resolves once it reads. Stop it
 * with finishBankcheck(h), which parses its summary.
 */
export async function startBankcheck(db, states, { maxMs = 300000, reopen, holdMs } = {}) {
    const flags = [...(reopen !== undefined ? ['--reopen', String(reopen)] : []), ...(holdMs ? ['--hold-ms', String(holdMs)] : [])];
    const argv = [...flags, db, String(maxMs), ...states.map(([s, n]) => `${s}:${n}`)];
    const h = spawnTracked(binPath('bankcheck'), argv);
    await waitFor(
        () => {
            if (/bankcheck: reading/.test(h.stderr())) return true;
            if (h.exitStatus) throw fatal(`bankcheck exited (${fmtExit(h.exitStatus)}): ${h.stderr()}`);
            return false;
        },
        { timeoutMs: 10000, what: 'bankcheck to start reading' },
    );
    return h;
}

/** The last progress line of a running bankcheck ({ checks, violations, errors, seen }), or null. */
export function bankcheckProgress(h) {
    const all = [...h.stderr().matchAll(/^bankcheck: progress (\{.*\})$/gm)];
    return all.length ? JSON.parse(all[all.length - 1][1]) : null;
}

/**
 * Wait until every bankcheck in hs has made at least min checks in state
 * index `state`. Fails at once if one exited or reports a violation or error.
 */
export function waitBankChecks(hs, state, min, { timeoutMs = 30000 } = {}) {
    return waitFor(
        () => {
            for (const h of hs) {
                if (h.exitStatus) throw fatal(`bankcheck pid ${h.pid} exited (${fmtExit(h.exitStatus)})`);
                const p = bankcheckProgress(h);
                if (p && (p.violations || p.errors)) throw fatal(`bankcheck pid ${h.pid} reports ${p.violations} violations and ${p.errors} errors`);
            }
            return hs.every((h) => (bankcheckProgress(h)?.seen[state] ?? 0) >= min);
        },
        { timeoutMs, what: `${min} bankcheck reads of state ${state} by each of ${hs.length} readers` },
    );
}

/**
 * Checks a bankcheck summary counts as completed within [fromUs, toUs] (unix
 * µs): the sum of its 1 ms timeline buckets that lie wholly inside.
 */
export function bankChecksBetween(summary, fromUs, toUs) {
    let n = 0;
    summary.timeline.forEach((count, i) => {
        const start = summary.t0_us + i * 1000;
        if (start >= fromUs && start + 1000 <= toUs) n += count;
    });
    return n;
}

/** The time (unix µs) of the first line of a process's stderr log that matches re, or null. */
export function logTimeUs(h, re) {
    for (const line of h.stderr().split('\n')) {
        if (!re.test(line)) continue;
        const m = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.(\d{6})Z /.exec(line);
        if (m) return Date.parse(`${m[1]}Z`) * 1000 + Number(m[2]);
    }
    return null;
}

/** SIGTERM a bankcheck reader and return its JSON summary (throws if it printed none). */
export async function finishBankcheck(h) {
    const st = await h.stop();
    const line = h.stdout().trim().split('\n').pop();
    if (st.code !== 0 || !line) throw new Error(`bankcheck pid ${h.pid}: ${fmtExit(st)}, stdout ${JSON.stringify(h.stdout())}\n${h.stderr()}`);
    return JSON.parse(line);
}

// ---------------------------------------------------------------- bank workload
//
// The schema bankcheck reads (tests/tools/bankcheck.c) and writers that move
// money between accounts in ATOMIC transactions, so that the total and the
// number of accounts never change and bank_meta.seq grows with every commit.

/**
 * Create the bank schema through client c and fill it: `accounts` accounts of
 * `balance` each, bank_meta.seq = seq, and `padMiB` blobs of 1 MiB in
 * table pad (to make snapshots and transactions larger). Each account row
 * carries `filler` bytes so that some 25 fit a page: a transfer then mostly
 * touches two table pages, and a reader of a half-applied transaction would
 * see one side of it (with the whole table on one page it could not tell).
 * padFirst creates pad before the accounts, so the tables get other root
 * pages than the default order gives. autoVacuum (NONE, FULL, INCREMENTAL)
 * is set before the first table, on a fresh database. Resolves to the
 * invariant [sum, count].
 */
export async function setupBank(c, { accounts = 1000, balance = 1000, seq = 0, padMiB = 0, padFirst = false, filler = 150, autoVacuum } = {}) {
    if (autoVacuum) {
        await exec1(c, `PRAGMA auto_vacuum = ${autoVacuum}`);
        await exec1(c, 'VACUUM'); // so that it holds whatever the primary wrote first
    }
    const pad = 'CREATE TABLE pad (id INTEGER PRIMARY KEY, data BLOB NOT NULL)';
    const ddl = [
        ...(padFirst ? [pad] : []),
        'CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL, filler BLOB)',
        'CREATE INDEX accounts_balance ON accounts(balance)',
        'CREATE TABLE bank_meta (id INTEGER PRIMARY KEY, seq INTEGER NOT NULL)',
        ...(padFirst ? [] : [pad]),
    ];
    for (const sql of ddl) await exec1(c, sql);
    await exec1(c, 'INSERT INTO bank_meta VALUES (1, ?)', [BigInt(seq)]);
    // Accounts and pad blobs interleaved, so that the bank's pages are spread
    // over the whole file: a snapshot torn anywhere tears the bank.
    const parts = padMiB + 1;
    for (let i = 0; i < parts; i++) {
        const lo = Math.floor((accounts * i) / parts) + 1;
        const hi = Math.floor((accounts * (i + 1)) / parts);
        await exec1(
            c,
            'WITH RECURSIVE s(x) AS (SELECT ? UNION ALL SELECT x + 1 FROM s WHERE x < ?) INSERT INTO accounts (id, balance, filler) SELECT x, ?, zeroblob(?) FROM s',
            [BigInt(lo), BigInt(hi), BigInt(balance), BigInt(filler)],
        );
        if (i < padMiB) await exec1(c, 'INSERT INTO pad (data) VALUES (randomblob(1024 * 1024))');
    }
    return [accounts * balance, accounts];
}

/**
 * Bank writers: `clients` concurrent clients on primary addr, each sending
 * ATOMIC transactions of 1..maxTransfers transfers plus seq = seq + 1; with
 * probability padRate one also rewrites a pad blob (a transaction of over 256
 * pages, more than one stream chunk). Returns { committed(), until(n, ms),
 * stop() } where stop() resolves to the number committed and rethrows any
 * writer error.
 */
export function bankLoad(addr, { clients = 8, accounts = 1000, seed = 1, maxTransfers = 4, padRate = 0.05, padRows = 0 } = {}) {
    let stopped = false;
    let committed = 0;
    const cs = Array.from({ length: clients }, () => makeClient(addr));
    const done = Promise.all(
        cs.map(async (cl, ci) => {
            const rand = rng(seed * 131 + ci);
            const pick = () => BigInt(1 + Math.floor(rand() * accounts));
            try {
                while (!stopped) {
                    const statements = [stmt('UPDATE bank_meta SET seq = seq + 1 WHERE id = 1')];
                    const n = 1 + Math.floor(rand() * maxTransfers);
                    for (let i = 0; i < n; i++) {
                        const amount = BigInt(1 + Math.floor(rand() * 500));
                        statements.push(stmt('UPDATE accounts SET balance = balance - ? WHERE id = ?', [amount, pick()]));
                        statements.push(stmt('UPDATE accounts SET balance = balance + ? WHERE id = ?', [amount, pick()]));
                    }
                    if (padRows > 0 && rand() < padRate) {
                        statements.push(stmt('UPDATE pad SET data = randomblob(length(data)) WHERE id = ?', [BigInt(1 + Math.floor(rand() * padRows))]));
                    }
                    const res = await cl.execute({ mode: 'MODE_ATOMIC', statements });
                    okResults(res);
                    committed++;
                }
            } finally {
                cl.close();
            }
        }),
    );
    done.catch(() => {
        stopped = true; // one writer failed: stop the others; stop() reports it
    });
    return {
        committed: () => committed,
        /** Resolve once n transactions have committed (fails after ms, or if a writer failed). */
        until: (n, ms = 60000) =>
            waitFor(
                async () => {
                    if (stopped) await done; // rethrows a writer's error
                    return committed >= n;
                },
                { timeoutMs: ms, what: `${n} bank transactions (${committed} so far)` },
            ),
        stop: async () => {
            stopped = true;
            await done;
            return committed;
        },
    };
}

/**
 * Replica R (a startReplica handle) holds exactly what the primary behind
 * client c holds at Status st: applied txid, its own and the file's checksum
 * (sqlq --checksum with the cookie delta), integrity_check = ok, and the same
 * rows for each query in `queries` (run through Execute and through sqlq;
 * integers must stay below 2^53). Resolves to the replica's /v1/status.
 */
export async function assertReplicaSame(c, R, st, queries, what = 'replica') {
    const s = await replicaStatus(R);
    assertStrict.equal(String(s.applied_txid), String(st.head_txid), `${what}: applied txid`);
    assertStrict.equal(s.database_id, st.database_id, `${what}: database id`);
    assertStrict.equal(s.checksum, st.checksum, `${what}: the replica's checksum vs the primary's Status`);
    const sum = sqlqChecksum(R.replica, replicaCookieDelta(R.replica, s));
    assertStrict.equal(sum.checksum, st.checksum, `${what}: sqlq --checksum of the replica file vs the primary's Status`);
    assertStrict.equal(sum.db_pages, st.db_pages, `${what}: pages`);
    assertStrict.deepEqual(sqlqRows(R.replica, 'PRAGMA integrity_check'), [['ok']], `${what}: integrity_check`);
    for (const sql of queries) {
        const primary = rowsOf(await exec1(c, sql)).map((r) => r.map((v) => (typeof v === 'bigint' ? Number(v) : Buffer.isBuffer(v) ? { blob: v.toString('hex') } : v)));
        assertStrict.deepEqual(sqlqRows(R.replica, sql), primary, `${what}: ${sql}`);
    }
    return s;
}

/** The rows that make up the bank: for assertReplicaSame. */
export const BANK_QUERIES = [
    'SELECT id, balance FROM accounts ORDER BY id',
    'SELECT id, seq FROM bank_meta ORDER BY id',
    'SELECT id, length(data), hex(substr(data, 1, 64)), hex(substr(data, -64)) FROM pad ORDER BY id', // all of it: the checksum
];

/**
 * Stop the bank readers that ran while replica R took a snapshot and check
 * what every such test requires: no reader saw a violation or an error, and
 * together they read at least minDuring times while the snapshot was being
 * applied (between its "snapshot begins" and "snapshot applied" log lines).
 * Returns the readers' summaries, in order, for test-specific checks.
 */
export async function finishReadersAcrossSnapshot(t, R, readers, minDuring) {
    const begun = logTimeUs(R, /snapshot begins/);
    const applied = logTimeUs(R, /snapshot applied: txid/);
    assertStrict.ok(begun && applied, `the replica logs its snapshot\n${R.tail()}`);
    const sums = [];
    for (const h of readers.splice(0)) sums.push(await finishBankcheck(h));
    const during = sums.map((r) => bankChecksBetween(r, begun, applied));
    t.diagnostic(`snapshot applied in ${((applied - begun) / 1000).toFixed(1)} ms; checks by each reader meanwhile: ${during.join(', ')}`);
    assertStrict.ok(during.reduce((a, b) => a + b, 0) >= minDuring, `reads while the snapshot was applied: ${during.join(', ')}`);
    for (const [i, r] of sums.entries()) {
        t.diagnostic(`reader ${i}: ${JSON.stringify({ ...r, timeline: undefined })}`);
        assertStrict.equal(r.violations, 0, `reader ${i}: violations: ${r.problems.join('; ')}`);
        assertStrict.equal(r.errors, 0, `reader ${i}: errors: ${r.problems.join('; ')}`);
    }
    return sums;
}

// ---------------------------------------------------------------- sidecar (boomerang-proxy) and relay
//
// The sidecar serves Hrana over HTTP to apps (contract: notes/proxy-contract.md);
// the relay (tests/tools/relay.c) sits between a sidecar and the primary to add
// delay or cut the link (SIGUSR1 blackholes it, SIGUSR2 heals it).

/** True when the proxy tests should be skipped: no boomerang-proxy and no $BOOMERANG_BIN. */
export function skipNoProxy() {
    return !process.env.BOOMERANG_BIN && !haveBinary('boomerang-proxy');
}

/** The test's environment minus every BOOMERANG_* variable, plus env: flags come only from the test. */
function childEnvWith(env = {}) {
    const out = {};
    for (const [k, v] of Object.entries(process.env)) {
        if (!k.startsWith('BOOMERANG_')) out[k] = v;
    }
    return Object.assign(out, env);
}

/** "http://HOST:PORT" of a primary handle (startPrimary), a relay handle, or a URL string. */
function primaryUrlOf(p) {
    if (typeof p === 'string') return p;
    if (p && p.url) return p.url;
    if (p && p.addr) return `http://${p.addr}`;
    throw new Error(`no primary URL in ${JSON.stringify(p)}`);
}

/**
 * One HTTP/1.1 request, no keep-alive (agent: false), over TCP (port) or a
 * unix socket (socketPath). body: a Buffer, a string, or an object sent as
 * JSON (content-type application/json unless headers give one). Resolves to
 * { status, headers (lower-case names), raw (Buffer), body (utf8), json() }.
 */
export function httpRequest({ port, host = '127.0.0.1', socketPath, method = 'GET', path: p = '/', headers = {}, body, timeoutMs = 60000 } = {}) {
    return new Promise((resolve, reject) => {
        const hdrs = { ...headers };
        let buf = null;
        if (body !== undefined && body !== null) {
            buf = Buffer.isBuffer(body) ? body : Buffer.from(typeof body === 'string' ? body : JSON.stringify(body));
            const names = Object.keys(hdrs).map((k) => k.toLowerCase());
            if (!names.includes('content-type')) hdrs['content-type'] = 'application/json';
            if (!names.includes('content-length')) hdrs['content-length'] = String(buf.length);
        }
        const opts = { method, path: p, headers: hdrs, agent: false, timeout: timeoutMs };
        if (socketPath) opts.socketPath = socketPath;
        else Object.assign(opts, { host, port });
        let settled = false;
        const req = http.request(opts, (res) => {
            const chunks = [];
            res.on('data', (d) => chunks.push(d));
            res.on('end', () => {
                settled = true;
                const raw = Buffer.concat(chunks);
                const text = raw.toString('utf8');
                resolve({
                    status: res.statusCode,
                    headers: res.headers,
                    raw,
                    body: text,
                    json() {
                        try {
                            return JSON.parse(text);
                        } catch (e) {
                            throw new Error(`${method} ${p}: ${res.statusCode} body is not JSON (${e.message}): ${text.slice(0, 300)}`);
                        }
                    },
                });
            });
            res.on('error', (e) => {
                if (!settled) reject(e);
            });
        });
        req.on('timeout', () => req.destroy(new Error(`${method} ${p}: no answer within ${timeoutMs} ms`)));
        req.on('error', (e) => {
            if (!settled) reject(e);
        });
        req.end(buf || undefined);
    });
}

/**
 * A fetch(input, init) that sends each request over the unix socket at
 * socketPath (for createClient({ url, fetch })): the client calls it with a
 * Request whose URL's path is kept and whose host is ignored.
 */
export function unixFetch(socketPath) {
    return async (input, init) => {
        const req = input instanceof Request ? input : new Request(input, init);
        const u = new URL(req.url);
        const headers = {};
        req.headers.forEach((v, k) => {
            headers[k] = v;
        });
        const body = req.method === 'GET' || req.method === 'HEAD' ? undefined : Buffer.from(await req.arrayBuffer());
        const r = await httpRequest({ socketPath, method: req.method, path: u.pathname + u.search, headers, body });
        const h = new Headers();
        for (const [k, v] of Object.entries(r.headers)) {
            for (const one of Array.isArray(v) ? v : [v]) h.append(k, one);
        }
        return new Response(r.status === 204 || r.status === 304 ? null : r.raw, { status: r.status, headers: h });
    };
}

/**
 * Parse Prometheus text format into { 'name{k="v",...}': number } with the
 * labels sorted by name ('name' alone when there are none). Comments and blank
 * lines are skipped; "+Inf", "-Inf" and "NaN" are understood.
 */
export function parseMetrics(text) {
    const out = {};
    for (const line of text.split('\n')) {
        const l = line.trim();
        if (!l || l.startsWith('#')) continue;
        const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/.exec(l);
        if (!m) throw new Error(`metrics: unparseable line ${JSON.stringify(line)}`);
        out[metricKey(m[1], parseLabels(m[3] || ''))] = parseSampleValue(m[4]);
    }
    return out;
}

function parseLabels(s) {
    const labels = {};
    const re = /([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"/g;
    for (let m = re.exec(s); m; m = re.exec(s)) labels[m[1]] = m[2].replace(/\\(.)/g, (_x, c) => (c === 'n' ? '\n' : c));
    return labels;
}

function parseSampleValue(v) {
    if (v === '+Inf' || v === 'Inf') return Infinity;
    if (v === '-Inf') return -Infinity;
    if (v === 'NaN') return NaN;
    const n = Number(v);
    if (Number.isNaN(n)) throw new Error(`metrics: bad sample value ${v}`);
    return n;
}

/** The key parseMetrics() uses for a sample: name{labels sorted by name}. */
export function metricKey(name, labels = {}) {
    const ks = Object.keys(labels).sort();
    if (!ks.length) return name;
    return `${name}{${ks.map((k) => `${k}="${String(labels[k]).replace(/["\\]/g, '\\$&').replace(/\n/g, '\\n')}"`).join(',')}}`;
}

/** A sample of parsed metrics m, or 0 when absent (a counter not yet incremented). */
export function metricValue(m, name, labels = {}) {
    return m[metricKey(name, labels)] ?? 0;
}

/** The sum of every sample of name over all its label sets (0 when absent). */
export function metricSum(m, name) {
    let sum = 0;
    for (const [k, v] of Object.entries(m)) {
        if (k === name || k.startsWith(`${name}{`)) sum += v;
    }
    return sum;
}

/** True when parsed metrics m have a sample of name, with any labels. */
export function hasMetric(m, name) {
    return Object.keys(m).some((k) => k === name || k.startsWith(`${name}{`));
}

/**
 * Start boomerang-proxy (the sidecar) with --primary primaryUrl (a URL, or a
 * startPrimary/startRelay handle) and --replica replica (default: a fresh
 * temp dir's replica.db), listening on an ephemeral loopback port and, with
 * socket, on that unix socket. args: extra flags; env: extra environment.
 * bearer: the app token its own helper GETs send (with --app-token-file).
 * It is a server: stopAll() expects it to exit 0 on SIGTERM.
 * Resolves to the process handle plus { url, port, socket, replica,
 * request(opts), get(path), metrics(), status(), readyz(), waitReady() }.
 */
export async function startProxy({ primaryUrl, replica, dir, args = [], env = {}, socket, bearer, timeoutMs = 15000 } = {}) {
    const url = primaryUrlOf(primaryUrl);
    if (!dir) dir = replica ? path.dirname(replica) : makeTmpDir('boomerang-proxy-');
    if (!replica) replica = path.join(dir, 'replica.db');
    const argv = ['--primary', url, '--replica', replica, '--listen', '127.0.0.1:0', ...(socket ? ['--socket', socket] : []), ...args];
    const h = spawnTracked(binPath('boomerang-proxy'), argv, { env: childEnvWith(env) });
    h.server = true; // runs until signalled; exits 0 on SIGTERM
    h.replica = replica;
    h.dir = dir;
    h.socket = socket;
    h.bearer = bearer;
    const esc = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    const m = await waitFor(
        () => {
            const text = h.stderr();
            const found = /listening on 127\.0\.0\.1:(\d+) \(http\)/.exec(text);
            const unixOk = !socket || new RegExp(`listening on unix:${esc(socket)} \\(http\\)`).test(text);
            if (found && unixOk) return found;
            if (h.exitStatus) throw fatal(`proxy exited before listening (${fmtExit(h.exitStatus)})\n${h.tail()}`);
            return null;
        },
        { timeoutMs, what: '"listening on" from boomerang-proxy' },
    ).catch(async (e) => {
        await h.kill9();
        e.message += `\n--- stderr ---\n${h.tail()}`;
        throw e;
    });
    h.port = Number(m[1]);
    h.addr = `127.0.0.1:${h.port}`;
    h.url = `http://${h.addr}`;
    /** An HTTP request to this sidecar (TCP), with its bearer unless headers give an authorization. */
    h.request = (opts = {}) => {
        const headers = { ...(opts.headers || {}) };
        if (h.bearer && !Object.keys(headers).some((k) => k.toLowerCase() === 'authorization')) headers.authorization = `Bearer ${h.bearer}`;
        return httpRequest({ port: h.port, ...opts, headers });
    };
    h.get = (p, headers) => h.request({ path: p, headers });
    h.metrics = async () => {
        const r = await h.get('/metrics');
        if (r.status !== 200) throw new Error(`GET /metrics: ${r.status} ${r.body}`);
        return parseMetrics(r.body);
    };
    h.status = async () => {
        const r = await h.get('/v1/status');
        if (r.status !== 200) throw new Error(`GET /v1/status: ${r.status} ${r.body}`);
        return r.json();
    };
    /** GET /ready: { status, json } (json null when the body is not JSON). */
    h.readyz = async () => {
        const r = await h.get('/ready');
        let json = null;
        try {
            json = JSON.parse(r.body);
        } catch {
            /* reported by the caller */
        }
        return { status: r.status, json, body: r.body };
    };
    /** Wait until GET /ready answers 200 (the replica caught up at least once). */
    h.waitReady = (ms = 30000) =>
        waitFor(
            async () => {
                if (h.exitStatus) throw fatal(`proxy exited (${fmtExit(h.exitStatus)})\n${h.tail()}`);
                const r = await h.readyz();
                return r.status === 200 ? r.json || true : null;
            },
            { timeoutMs: ms, what: `boomerang-proxy pid ${h.pid} to be ready` },
        );
    return h;
}

/** True when the relay tests should be skipped: no bin/relay and no $BOOMERANG_BIN. */
export function skipNoRelay() {
    return !process.env.BOOMERANG_BIN && !haveBinary('relay');
}

/**
 * Start the fault relay (tests/tools/relay.c) on an ephemeral loopback port,
 * forwarding to target (a startPrimary handle, "HOST:PORT" or
 * "http://HOST:PORT") with delayMs of one-way delay (and jitterMs). Resolves
 * to the process handle plus { port, addr, url, partition(), heal() }:
 * partition() (SIGUSR1) blackholes the link, heal() (SIGUSR2) restores it.
 * Signals are asynchronous: a test that needs the cut in force confirms it by
 * its effect (see the proxy tests).
 */
export async function startRelay({ target, delayMs = 0, jitterMs, control, args = [], timeoutMs = 10000 } = {}) {
    let t = target && target.addr ? target.addr : String(target);
    t = t.replace(/^https?:\/\//, '').replace(/\/.*$/, '');
    const argv = ['--listen', '127.0.0.1:0', '--target', t, '--delay-ms', String(delayMs)];
    if (jitterMs !== undefined) argv.push('--jitter-ms', String(jitterMs));
    if (control) argv.push('--control', control);
    argv.push(...args);
    const h = spawnTracked(binPath('relay'), argv, { env: childEnvWith() });
    h.server = true; // runs until signalled; exits 0 on SIGTERM
    const m = await waitFor(
        () => {
            const found = /relay listening on 127\.0\.0\.1:(\d+)/.exec(h.stderr() + h.stdout());
            if (found) return found;
            if (h.exitStatus) throw fatal(`relay exited before listening (${fmtExit(h.exitStatus)})\n${h.tail()}`);
            return null;
        },
        { timeoutMs, what: '"relay listening on" from the relay' },
    ).catch(async (e) => {
        await h.kill9();
        e.message += `\n--- stderr ---\n${h.tail()}`;
        throw e;
    });
    h.port = Number(m[1]);
    h.addr = `127.0.0.1:${h.port}`;
    h.url = `http://${h.addr}`;
    // The relay logs "state <from> -> <to>" once it has acted on a signal:
    // partition() and heal() resolve when that line appears, so the fault is
    // in force (or lifted) when they return.
    const transitions = (to) => (h.stderr().match(new RegExp(`state \\w+ -> ${to}\\b`, 'g')) || []).length;
    const switchTo = async (sig, to) => {
        if (h.exitStatus) throw new Error(`relay pid ${h.pid} is gone (${fmtExit(h.exitStatus)})`);
        const before = transitions(to);
        process.kill(h.pid, sig);
        await waitFor(() => transitions(to) > before, { timeoutMs: 5000, what: `relay pid ${h.pid} to log "-> ${to}"` });
    };
    h.partition = () => switchTo('SIGUSR1', 'partition');
    h.heal = () => switchTo('SIGUSR2', 'ok');
    return h;
}

// ---------------------------------------------------------------- Hrana over HTTP, raw

/** Hrana JSON Values from JS: bigint -> integer, number -> float, string -> text, Buffer -> blob, null. */
export const HV = {
    null: () => ({ type: 'null' }),
    int: (x) => ({ type: 'integer', value: String(x) }),
    float: (x) => ({ type: 'float', value: x }),
    text: (s) => ({ type: 'text', value: s }),
    blob: (b, { padded = true } = {}) => {
        const s = Buffer.from(b).toString('base64');
        return { type: 'blob', base64: padded ? s : s.replace(/=+$/, '') };
    },
};

/** A Hrana execute request for sql with positional args (Hrana Values). */
export function hExecute(sql, args = [], extra = {}) {
    return { type: 'execute', stmt: { sql, args, named_args: [], want_rows: true, ...extra } };
}

/**
 * POST a pipeline body to a sidecar handle (TCP, or its unix socket with
 * { unix: true }). Resolves to the httpRequest() answer.
 */
export function hranaPost(proxy, body, { headers = {}, path: p = '/v2/pipeline', unix = false } = {}) {
    if (unix) return httpRequest({ socketPath: proxy.socket, method: 'POST', path: p, headers, body });
    return proxy.request({ method: 'POST', path: p, headers, body });
}

/**
 * Assert an HTTP-level Hrana error: the status, content-type exactly
 * application/json, a string message and (when given) the code. Returns the body.
 */
export function assertHttpError(r, status, code, what = 'request') {
    const show = `${what}: ${r.status} ${JSON.stringify(r.headers['content-type'])} ${r.body.slice(0, 400)}`;
    assertStrict.equal(r.status, status, show);
    assertStrict.equal(r.headers['content-type'], 'application/json', `${show}: content-type`);
    const j = r.json();
    assertStrict.equal(typeof j.message, 'string', `${show}: message`);
    assertStrict.ok(j.message.length > 0, `${show}: empty message`);
    if (code !== undefined) assertStrict.equal(j.code, code, `${show}: code`);
    return j;
}

/** The result at index i of a 200 pipeline answer, asserted ok; returns its response. */
export function okResult(r, i = 0, what = 'pipeline') {
    assertStrict.equal(r.status, 200, `${what}: ${r.status} ${r.body.slice(0, 400)}`);
    const j = r.json();
    const res = j.results[i];
    assertStrict.equal(res?.type, 'ok', `${what}: result ${i} is ${JSON.stringify(res)}`);
    return res.response;
}

/** The error of result i of a 200 pipeline answer, asserted to be a per-request error with code. */
export function errResult(r, i, code, what = 'pipeline') {
    assertStrict.equal(r.status, 200, `${what}: ${r.status} ${r.body.slice(0, 400)}`);
    const res = r.json().results[i];
    assertStrict.equal(res?.type, 'error', `${what}: result ${i} is ${JSON.stringify(res)}`);
    assertStrict.equal(typeof res.error.message, 'string', `${what}: message`);
    if (code !== undefined) assertStrict.equal(res.error.code, code, `${what}: code in ${JSON.stringify(res.error)}`);
    return res.error;
}

/** The rows of an execute response as JS values (integer -> BigInt, blob -> Buffer). */
export function hRows(resp) {
    return resp.result.rows.map((row) =>
        row.map((v) => {
            switch (v.type) {
                case 'null':
                    return null;
                case 'integer':
                    return BigInt(v.value);
                case 'float':
                    return v.value;
                case 'text':
                    return v.value;
                case 'blob':
                    return Buffer.from(v.base64, 'base64');
                default:
                    throw new Error(`unknown Hrana value ${JSON.stringify(v)}`);
            }
        }),
    );
}
