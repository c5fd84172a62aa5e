// The region test: topology, scenarios and their assertions. Used by
// tests/regions/regions.mjs (make test-regions, through run.sh) and by the fast
// subset tests/integration/regions.test.js.
//
// Topology (mode "netns": namespaces made by netns.sh; mode "loopback": the
// same processes and relays on 127.0.0.1 with ephemeral ports):
//
//   region P (10.77.0.1)   boomerang-primary :5001
//                          sidecar D :8080 -> primary directly (no relay): the commit-time baseline
//   region A (10.77.0.2)   relay 127.0.0.1:6001 -> 10.77.0.1:5001, one-way delay 40 ms
//                          sidecar A :8080 -> http://127.0.0.1:6001 (writes and the stream cross the relay)
//                          the app: the load generator (this process's namespace)
//   region B (10.77.0.3)   relay 127.0.0.1:6001 -> 10.77.0.1:5001, one-way delay 80 ms
//                          sidecar B :8080, --max-wait-ms 2000 --fallback error
//
// Sidecars listen on their region address with --app-token-file, and every
// request carries the bearer. The load comes from bin/boomerang-bench when it
// exists (else tests/regions/loadgen.mjs, same flags and report shape). If the
// bench has no bearer flag, each sidecar listens on 127.0.0.1 in its region and
// a relay with no delay publishes it on the region address ("app relays").
//
// Processes are stopped by PID (SIGTERM, then SIGKILL), never by name.
import { spawn, execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(here, '..', '..');

// One-way delay sidecar <-> primary, ms. REGIONS_DELAYS (default "A=40,B=80") picks the remote
// regions and their delays: tests/bench/regions.sh runs "A=<d>" for each delay of its figures.
// The partition scenario needs B, the restart scenario A.
export const DELAYS = parseDelays(process.env.REGIONS_DELAYS || 'A=40,B=80');

/** "A=40,B=80" -> { D: 0, A: 40, B: 80 } (D, next to the primary, is always there). */
function parseDelays(spec) {
    const d = { D: 0 };
    for (const item of spec.split(',').filter((s) => s.trim())) {
        const m = /^\s*([AB])\s*=\s*(\d+)\s*$/.exec(item);
        if (!m) throw new Error(`REGIONS_DELAYS: "${item}" is not A=<ms> or B=<ms>`);
        d[m[1]] = Number(m[2]);
    }
    return d;
}
// The issue's bound: visibility lag p99 <= one-way delay + 5 ms. REGIONS_VIS_SLACK_MS
// changes the 5 (e.g. on a machine too loaded to measure a 5 ms tail).
const VIS_SLACK_MS = Number(process.env.REGIONS_VIS_SLACK_MS || 5);
const ADDR = { p: '10.77.0.1', a: '10.77.0.2', b: '10.77.0.3' };
const REGION_OF = { D: 'p', A: 'a', B: 'b' };

// ---------------------------------------------------------------- small helpers

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms)); // scenario clock / poll backoff

/** Poll cond() until truthy (returns it) or throw after timeoutMs. */
export async function waitFor(cond, timeoutMs, what) {
    const deadline = Date.now() + timeoutMs;
    let last = null;
    for (let backoff = 5; ; backoff = Math.min(backoff * 2, 100)) {
        try {
            const v = await cond();
            if (v) return v;
        } catch (e) {
            last = e;
        }
        if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${last.message}` : ''}`);
        await sleep(backoff);
    }
}

/** One HTTP request; resolves { status, headers, body, json(), ms } (status 0 on a transport error). */
export function request(url, { method = 'GET', headers = {}, body, timeoutMs = 5000 } = {}) {
    const u = new URL(url);
    const t0 = performance.now();
    return new Promise((resolve) => {
        const h = { ...headers };
        if (body !== undefined) {
            h['content-type'] = 'application/json';
            h['content-length'] = Buffer.byteLength(body);
        }
        const req = http.request({ host: u.hostname, port: u.port, path: u.pathname, method, headers: h, agent: false }, (res) => {
            const chunks = [];
            res.on('data', (d) => chunks.push(d));
            res.on('end', () => {
                const text = Buffer.concat(chunks).toString('utf8');
                resolve({ status: res.statusCode, headers: res.headers, body: text, json: () => JSON.parse(text), ms: performance.now() - t0 });
            });
        });
        req.setTimeout(timeoutMs, () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
        req.on('error', (e) => resolve({ status: 0, error: e.message, headers: {}, body: '', json: () => null, ms: performance.now() - t0 }));
        if (body !== undefined) req.write(body);
        req.end();
    });
}

let stopping = false; // set by stopAll(): nothing new starts after it

class Proc {
    constructor(name, argv, logPath, ns) {
        if (stopping) throw new Error(`not starting ${name}: stopping`);
        this.name = name;
        this.argv = argv;
        this.ns = ns;
        const cmd = ns ? ['ip', 'netns', 'exec', ns, ...argv] : argv;
        // `ip netns exec` execs the command in place: this PID is the program's own.
        // Flags come only from argv: no BOOMERANG_* variable of ours reaches a child.
        const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('BOOMERANG_')));
        this.proc = spawn(cmd[0], cmd.slice(1), { stdio: ['ignore', 'pipe', 'pipe'], env });
        this.pid = this.proc.pid;
        this.text = '';
        this.log = fs.createWriteStream(logPath, { flags: 'a' });
        this.log.write(`--- ${new Date().toISOString()} ${cmd.join(' ')}\n`);
        const take = (d) => {
            this.text += d.toString('utf8');
            if (this.text.length > 200000) this.text = this.text.slice(-100000);
            // 'exit' can come before the pipes are drained, so stop() may have ended the log.
            if (!this.log.writableEnded) this.log.write(d);
        };
        this.proc.stdout.on('data', take);
        this.proc.stderr.on('data', take);
        this.exit = null;
        this.exited = new Promise((resolve) => {
            this.proc.on('exit', (code, signal) => {
                this.exit = { code, signal };
                live.delete(this);
                resolve(this.exit);
            });
            this.proc.on('error', (e) => {
                this.text += `spawn error: ${e.message}\n`;
                this.exit = { code: -1, signal: null };
                live.delete(this);
                resolve(this.exit);
            });
        });
        live.add(this);
    }

    signal(sig) {
        if (this.exit) return;
        try {
            process.kill(this.pid, sig);
        } catch (e) {
            if (e.code !== 'ESRCH') throw e;
        }
    }

    async stop(graceMs = 5000) {
        if (this.exit) return this.exit;
        this.signal('SIGTERM');
        const t = setTimeout(() => this.signal('SIGKILL'), graceMs); // deadline for SIGTERM
        const st = await this.exited;
        clearTimeout(t);
        this.log.end();
        return st;
    }

    tail(n = 15) {
        return this.text.split('\n').slice(-n).join('\n');
    }

    /** Wait for a log line matching re; returns the match. */
    waitLine(re, timeoutMs = 15000) {
        return waitFor(() => {
            const m = re.exec(this.text);
            if (m) return m;
            if (this.exit) throw Object.assign(new Error(`${this.name} exited (${JSON.stringify(this.exit)}):\n${this.tail()}`), { fatal: true });
            return null;
        }, timeoutMs, `"${re.source}" from ${this.name}`).catch((e) => {
            throw new Error(`${e.message}\n--- ${this.name} log ---\n${this.tail()}`);
        });
    }
}

const live = new Set();

/** Stop every process started here, by PID. */
export async function stopAll() {
    stopping = true;
    await Promise.all([...live].map((p) => p.stop()));
}

process.on('exit', () => {
    for (const p of live) {
        try {
            process.kill(p.pid, 'SIGKILL');
        } catch {
            /* gone */
        }
    }
});

// ---------------------------------------------------------------- topology

/** The directory holding the binaries: $BOOMERANG_BIN, else <repo>/bin. */
export function binDir() {
    return path.resolve(process.env.BOOMERANG_BIN || path.join(REPO, 'bin'));
}

/** How to run the load: { kind: 'bench'|'loadgen', argv0, bearerFlag } */
export function loadProgram() {
    const want = process.env.REGIONS_LOAD || 'auto';
    const bench = path.join(binDir(), 'boomerang-bench');
    let haveBench = false;
    try {
        fs.accessSync(bench, fs.constants.X_OK);
        haveBench = true;
    } catch {
        /* not built yet */
    }
    if (want === 'bench' && !haveBench) throw new Error(`REGIONS_LOAD=bench but ${bench} is not there`);
    if (want === 'bench' || (want === 'auto' && haveBench)) {
        let help = '';
        try {
            help = execFileSync(bench, ['--help'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 5000 });
        } catch (e) {
            help = `${e.stdout || ''}${e.stderr || ''}`; // --help may exit non-zero
        }
        const flag = process.env.REGIONS_BENCH_BEARER_FLAG || ['--bearer-file', '--app-token-file', '--token-file'].find((f) => help.includes(f)) || null;
        return { kind: 'bench', argv0: [bench], bearerFlag: flag };
    }
    return { kind: 'loadgen', argv0: [process.execPath, path.join(here, 'loadgen.mjs')], bearerFlag: '--bearer-file' };
}

/**
 * Start the whole topology. opts: { mode: 'netns'|'loopback', id (netns run id),
 * dir (work dir: databases, logs, token) }. Resolves to a topology object.
 */
export async function startTopology({ mode, id, dir, log = () => {} }) {
    const bin = (n) => path.join(binDir(), n);
    for (const n of ['boomerang-primary', 'boomerang-proxy', 'relay']) {
        if (!fs.existsSync(bin(n))) throw new Error(`${bin(n)} not found: build first (make)`);
    }
    fs.mkdirSync(dir, { recursive: true });
    const load = loadProgram();
    const netns = mode === 'netns';
    const nsOf = (r) => (netns ? `bmr-${id}-${r}` : null);
    const appRelays = netns && (!load.bearerFlag || process.env.REGIONS_APP_RELAYS === '1');
    const token = crypto.randomBytes(16).toString('hex');
    const tokenFile = path.join(dir, 'app-token');
    fs.writeFileSync(tokenFile, `${token}\n`, { mode: 0o600 });
    const logOf = (n) => path.join(dir, `${n}.log`);
    const topo = { mode, id, dir, load, appRelays, token, tokenFile, sidecars: {}, relays: {}, procs: [] };

    // The primary.
    const plisten = netns ? `${ADDR.p}:5001` : '127.0.0.1:0';
    const primary = new Proc('primary', [bin('boomerang-primary'), '--db', path.join(dir, 'primary.db'), '--listen', plisten], logOf('primary'), nsOf('p'));
    const pm = await primary.waitLine(/listening on ([0-9.]+):(\d+) \(h2c\)/);
    topo.primary = { proc: primary, addr: `${pm[1]}:${pm[2]}` };
    log(`primary on ${topo.primary.addr}`);

    // A relay in each remote region, in front of the primary.
    const startRelay = async (name, ns, listen, target, delayMs) => {
        const p = new Proc(`relay-${name}`, [bin('relay'), '--listen', listen, '--target', target, '--delay-ms', String(delayMs)], logOf(`relay-${name}`), ns);
        const m = await p.waitLine(/relay listening on ([0-9.]+):(\d+)/);
        const transitions = (to) => (p.text.match(new RegExp(`state \\w+ -> ${to}\\b`, 'g')) || []).length;
        const switchTo = async (sig, to) => {
            const before = transitions(to);
            p.signal(sig);
            await waitFor(() => transitions(to) > before, 5000, `relay ${name} -> ${to}`);
        };
        return { proc: p, addr: `${m[1]}:${m[2]}`, partition: () => switchTo('SIGUSR1', 'partition'), heal: () => switchTo('SIGUSR2', 'ok') };
    };
    for (const name of ['A', 'B'].filter((n) => n in DELAYS)) {
        const ns = nsOf(REGION_OF[name]);
        topo.relays[name] = await startRelay(name, ns, netns ? '127.0.0.1:6001' : '127.0.0.1:0', topo.primary.addr, DELAYS[name]);
        log(`relay ${name}: ${topo.relays[name].addr} -> ${topo.primary.addr}, ${DELAYS[name]} ms one way`);
    }

    // The sidecars.
    const startSidecar = async (name, port) => {
        const region = REGION_OF[name];
        const upstream = name === 'D' ? topo.primary.addr : topo.relays[name].addr;
        let listen;
        if (!netns) listen = `127.0.0.1:${port || 0}`;
        else listen = appRelays ? '127.0.0.1:8080' : `${ADDR[region]}:8080`;
        const args = [bin('boomerang-proxy'), '--primary', `http://${upstream}`, '--replica', path.join(dir, `replica-${name}.db`), '--listen', listen, '--threads', '1'];
        if (netns && !appRelays) args.push('--app-token-file', tokenFile);
        if (name === 'B') args.push('--max-wait-ms', '2000', '--fallback', 'error');
        const p = new Proc(`sidecar-${name}`, args, logOf(`sidecar-${name}`), nsOf(region));
        const m = await p.waitLine(/listening on ([0-9.]+):(\d+) \(http\)/);
        return { proc: p, addr: `${m[1]}:${m[2]}`, port: Number(m[2]) };
    };
    for (const name of ['D', 'A', 'B'].filter((n) => n in DELAYS)) {
        const s = await startSidecar(name);
        const sc = { name, delay: DELAYS[name], ...s };
        sc.bearer = netns && !appRelays ? token : null;
        sc.headers = sc.bearer ? { authorization: `Bearer ${sc.bearer}` } : {};
        sc.url = `http://${s.addr}`;
        if (appRelays) {
            const ar = await startRelay(`app-${name}`, nsOf(REGION_OF[name]), `${ADDR[REGION_OF[name]]}:8081`, s.addr, 0);
            sc.url = `http://${ar.addr}`; // what the app (the load) and this driver use
            topo.procs.push(ar.proc);
        }
        sc.restart = async () => {
            const again = await startSidecar(name, s.port);
            sc.proc = again.proc;
        };
        sc.status = async () => {
            const r = await request(`${sc.url}/v1/status`, { headers: sc.headers, timeoutMs: 2000 });
            if (r.status !== 200) throw new Error(`GET ${sc.url}/v1/status: ${r.status} ${r.error || r.body}`);
            return r.json();
        };
        sc.pipeline = (sql, args = [], headers = {}, timeoutMs = 60000) =>
            request(`${sc.url}/v2/pipeline`, {
                method: 'POST',
                headers: { ...sc.headers, ...headers },
                body: JSON.stringify({ requests: [{ type: 'execute', stmt: { sql, args } }, { type: 'close' }] }),
                timeoutMs,
            });
        topo.sidecars[name] = sc;
        log(`sidecar ${name} (${DELAYS[name]} ms) on ${sc.url}${sc.bearer ? ' (bearer required)' : ''}`);
    }
    for (const sc of Object.values(topo.sidecars)) {
        await waitFor(async () => (await request(`${sc.url}/ready`, { headers: sc.headers })).status === 200, 30000, `sidecar ${sc.name} ready`);
    }
    return topo;
}

// ---------------------------------------------------------------- reports (the bench contract)

/** The report entry of proxy url: per_proxy[] matched by proxy/url field, else by index. */
export function perProxy(report, url, index) {
    const pp = report.per_proxy || [];
    const byUrl = pp.find((p) => [p.proxy, p.url, p.name, p.label].some((v) => typeof v === 'string' && v.replace(/\/+$/, '') === url));
    const p = byUrl || pp[index];
    if (!p) return null;
    return { raw: p, write_ack: p.write_ack || p.metrics?.write_ack || null, read: p.read || p.metrics?.read || null, errors: p.errors || {} };
}

/**
 * Visibility stats for writer -> reader: report.visibility_pairs[] ({from,to,...}),
 * else per_proxy[w].visibility_to[readerUrl] / visibility[readerUrl]. null if absent.
 */
export function visPair(report, wUrl, rUrl, wIndex) {
    const norm = (s) => (typeof s === 'string' ? s.replace(/\/+$/, '') : s);
    const pairs = report.visibility_pairs || report.pairs || report.metrics?.visibility_pairs;
    if (Array.isArray(pairs)) {
        const p = pairs.find((x) => norm(x.from ?? x.writer) === wUrl && norm(x.to ?? x.reader) === rUrl);
        if (p) return p.p50_us !== undefined ? p : p.visibility || p.stats || null;
    }
    const w = perProxy(report, wUrl, wIndex)?.raw;
    const m = w && (w.visibility_to || w.visibility);
    if (Array.isArray(m)) return m.find((x) => norm(x.to_url ?? x.url ?? x.to) === rUrl) || null; // the bench: [{to, to_url, ...stats}]
    return (m && typeof m === 'object' && m[rUrl]) || null;
}

/** Total errors of one proxy: the bench gives a number, the stand-in {kind: n}. */
function proxyErrors(report, url, index) {
    const e = perProxy(report, url, index)?.errors;
    if (typeof e === 'number') return e;
    return flatErrors(e).reduce((a, [, n]) => a + n, 0);
}

/** Flatten an errors object ({kind: n} or nested {op: {kind: n}}) to [[path, n], ...]. */
export function flatErrors(obj, prefix = '') {
    const out = [];
    for (const [k, v] of Object.entries(obj || {})) {
        if (typeof v === 'number') out.push([prefix + k, v]);
        else if (v && typeof v === 'object') out.push(...flatErrors(v, `${prefix}${k}.`));
    }
    return out.filter(([, n]) => n > 0);
}

const KIND_RE = {
    proxy_error: /PROXY_ERROR/i,
    replica_behind: /REPLICA_BEHIND|503/i,
    unapplied: /unapplied|applied_0|applied0/i,
    connection: /connect|refused|reset|hang.?up|socket|ECONN|EPIPE|closed|eof|^io$|(^|[._])io([._]|$)/i,
};

/** Which allowed class an error kind falls in, or null. */
export function classify(kind, allowed) {
    return allowed.find((c) => KIND_RE[c].test(kind)) || null;
}

// ---------------------------------------------------------------- running the load

/**
 * Run the load (bench or loadgen) against the sidecars, with timed events.
 * opts: { label, duration, rate, writeRatio, visSample, clients, maxErrorRatio,
 *         events: [{ atMs, name, fn }] } (atMs from the load's start).
 * Resolves to { code, report, out, events: [{name, atMs, ms, result|error}] }.
 */
export async function runLoad(topo, o) {
    const order = ['D', 'A', 'B'].filter((n) => topo.sidecars[n]).map((n) => topo.sidecars[n]);
    const jsonPath = path.join(topo.dir, `${o.label}.json`);
    fs.rmSync(jsonPath, { force: true });
    const argv = [...topo.load.argv0];
    for (const sc of order) argv.push('--proxy', sc.url);
    argv.push('--clients', String(o.clients ?? 8), '--rate', String(o.rate), '--write-ratio', String(o.writeRatio ?? 0.2),
        '--duration', String(o.duration), '--visibility-sample', String(o.visSample ?? 0.5), '--json', jsonPath,
        '--label', o.label, '--max-error-ratio', String(o.maxErrorRatio ?? 0.01), '--progress', 'off');
    if (order[0].bearer) argv.push(topo.load.bearerFlag, topo.tokenFile);
    // REGIONS_LOAD_ARGS: more flags for the load, e.g. "--svg-prefix DIR/run" (tests/bench/regions.sh).
    argv.push(...(process.env.REGIONS_LOAD_ARGS || '').split(/\s+/).filter(Boolean));
    const p = new Proc(`load-${o.label}`, argv, path.join(topo.dir, `load-${o.label}.log`), null);
    const t0 = Date.now();
    const events = [];
    const runEvents = (async () => {
        for (const ev of o.events || []) {
            const wait = t0 + ev.atMs - Date.now();
            if (wait > 0) await sleep(wait);
            if (p.exit) break;
            const e = { name: ev.name, atMs: Date.now() - t0 };
            try {
                e.result = await ev.fn();
            } catch (err) {
                e.error = err.message;
            }
            e.ms = Date.now() - t0 - e.atMs;
            events.push(e);
        }
    })();
    const killer = setTimeout(() => p.signal('SIGKILL'), (o.duration + 120) * 1000); // bound on the load
    const st = await p.exited;
    clearTimeout(killer);
    await runEvents;
    let report = null;
    try {
        report = JSON.parse(fs.readFileSync(jsonPath, 'utf8'));
    } catch {
        /* judged by the caller */
    }
    return { code: st.code, signal: st.signal, report, out: p.text, events, order };
}

// ---------------------------------------------------------------- checks

export class Checks {
    constructor() {
        this.rows = [];
    }

    /**
     * Record one check: value and bound are display strings. { timing: true }
     * marks a latency bound (write-ack near RTT + commit, the visibility tail,
     * the wait budget's duration): `make test-regions` enforces those; the quick
     * subset in `make test` reports them but asserts only the behaviour, since
     * speed belongs to benchmarks, not to timed assertions in the test suite.
     */
    add(scenario, what, ok, value, bound, { timing = false } = {}) {
        this.rows.push({ scenario, what, ok: !!ok, value: String(value), bound: String(bound), timing });
        return ok;
    }

    get failed() {
        return this.rows.filter((r) => !r.ok);
    }

    /** Failed checks that are not latency bounds. */
    get failedBehaviour() {
        return this.rows.filter((r) => !r.ok && !r.timing);
    }

    table() {
        const w = [9, 50, 24, 30];
        const fmt = (c) => `${c[0].padEnd(w[0])} ${c[1].padEnd(w[1])} ${c[2].padStart(w[2])}  ${c[3].padEnd(w[3])} ${c[4]}`;
        return [fmt(['scenario', 'check', 'value', 'bound', 'ok']), ...this.rows.map((r) => fmt([r.scenario, r.what, r.value, r.bound, r.ok ? 'ok' : 'FAIL']))].join('\n');
    }
}

export const ms = (us) => (us === null || us === undefined ? 'n/a' : `${(us / 1000).toFixed(1)} ms`);

/** The bench's exit code and report: present, no violation, nothing lost. */
function checkRun(c, sc, run) {
    const r = run.report;
    c.add(sc, 'load ran, report written', r && run.code !== null, r ? `exit ${run.code}` : `exit ${run.code} ${run.signal || ''}`, 'JSON report');
    if (!r) return false;
    c.add(sc, 'RYW violations', r.ryw && r.ryw.violations === 0 && r.ryw.reads > 0, `${r.ryw?.violations} of ${r.ryw?.reads}`, '0, reads > 0');
    const lost = r.visibility_probes?.lost ?? r.ops?.visibility_lost ?? r.visibility_lost ?? r.metrics?.visibility?.lost ?? 0;
    c.add(sc, 'visibility probes lost', lost === 0, lost, '0');
    return true;
}

/**
 * The run's errors: kinds by allowed class (kinds are reported for the whole
 * run), the kinds in no allowed class, and each proxy's total.
 */
function errorClasses(report, order, allowed) {
    const classes = {};
    const other = [];
    for (const [k, n] of flatErrors(report.errors)) {
        const cls = classify(k, allowed);
        if (cls) classes[cls] = (classes[cls] || 0) + n;
        else other.push(`${k}=${n}`);
    }
    const perProxyTotal = Object.fromEntries(order.map((sc, i) => [sc.name, proxyErrors(report, sc.url, i)]));
    return { classes, other, per_proxy: perProxyTotal };
}

/** Scenario 1: steady load; write-ack at RTT + commit, visibility at the delay difference. */
export async function scenarioSteady(topo, c, { duration = 15, rate = 100 } = {}) {
    const run = await runLoad(topo, { label: 'steady', duration, rate, visSample: Number(process.env.REGIONS_VIS_SAMPLE || 0.5) });
    const sc = 'steady';
    const fig = { run: 'steady', duration_s: duration, rate, regions: [] };
    if (!checkRun(c, sc, run)) return { run, fig };
    const r = run.report;
    c.add(sc, 'bench exit code', run.code === 0, run.code, '0');
    const errs = flatErrors(r.errors);
    c.add(sc, 'errors', errs.length === 0, errs.length ? errs.map(([k, n]) => `${k}=${n}`).join(',') : 0, '0');
    const pp = Object.fromEntries(run.order.map((s, i) => [s.name, perProxy(r, s.url, i)]));
    const commit = pp.D?.write_ack?.p50_us;
    c.add(sc, 'commit time (write-ack p50 of D, no relay)', commit > 0, ms(commit), '> 0');
    fig.commit_ms = commit / 1000;
    for (const s of run.order) {
        const wa = pp[s.name]?.write_ack;
        const row = { region: s.name, one_way_delay_ms: s.delay };
        if (s.name !== 'D') {
            const expect = 2 * s.delay * 1000 + commit;
            c.add(sc, `write-ack p50 ${s.name} ≈ 2×${s.delay}ms + commit`, wa && Math.abs(wa.p50_us - expect) <= 0.1 * expect, ms(wa?.p50_us), `${ms(expect)} ±10%`, { timing: true });
        }
        row.write_ack_p50_ms = wa ? wa.p50_us / 1000 : null;
        row.write_ack_p99_ms = wa ? wa.p99_us / 1000 : null;
        const rd = pp[s.name]?.read;
        row.read_p50_ms = rd ? rd.p50_us / 1000 : null;
        row.read_p99_ms = rd ? rd.p99_us / 1000 : null;
        fig.regions.push(row);
    }
    // Visibility: a write acked at W (at commit + d_W) reaches R at commit + d_R,
    // so R sees it d_R - d_W after the ack, or at once if d_R <= d_W. From D
    // (d = 0, next to the primary) that is R's one-way delay: the issue's bound.
    fig.visibility_pairs = [];
    run.order.forEach((w, wi) => {
        for (const rd of run.order) {
            if (rd === w) continue;
            const v = visPair(r, w.url, rd.url, wi);
            const diff = Math.max(0, rd.delay - w.delay);
            const bound = (diff + VIS_SLACK_MS) * 1000;
            c.add(sc, `visibility p99 ${w.name}→${rd.name} ≤ max(0,${rd.delay}-${w.delay})+${VIS_SLACK_MS}ms`, v && v.count > 0 && v.p99_us <= bound, v ? `${ms(v.p99_us)} (n=${v.count})` : 'not in report', ms(bound), { timing: true });
            if (v && diff > 0) c.add(sc, `visibility p50 ${w.name}→${rd.name} ≥ ${diff}-5ms (delay is real)`, v.p50_us >= (diff - 5) * 1000, ms(v.p50_us), `≥ ${diff - 5} ms`);
            if (v) fig.visibility_pairs.push({ from: w.name, to: rd.name, expected_ms: diff, count: v.count, p50_ms: v.p50_us / 1000, p99_ms: v.p99_us / 1000, max_ms: v.max_us / 1000 });
            if (v && w.name === 'D') Object.assign(fig.regions.find((x) => x.region === rd.name), { visibility_from_primary_region: { p50_ms: v.p50_us / 1000, p99_ms: v.p99_us / 1000, max_ms: v.max_us / 1000, count: v.count } });
        }
    });
    fig.ryw = r.ryw;
    for (const row of fig.regions) row.ryw_violations = r.ryw?.violations ?? null; // the bench counts them for the run
    return { run, fig };
}

/** Wait until sidecar sc has applied the primary's head (as D, next to the primary, sees it). */
async function waitCaughtUp(topo, sc, timeoutMs) {
    const t0 = Date.now();
    const head = (await topo.sidecars.D.status()).primary_txid;
    await waitFor(async () => (await sc.status()).applied_txid >= head, timeoutMs, `sidecar ${sc.name} to apply txid ${head}`);
    return { head, ms: Date.now() - t0 };
}

/** Scenario 2: a partition of region B (cutMs) during load; B fails as configured, then catches up. */
export async function scenarioPartition(topo, c, { duration = 25, rate = 100, atMs = 5000, cutMs = 10000 } = {}) {
    const sc = 'partition';
    const B = topo.sidecars.B;
    const D = topo.sidecars.D;
    const probes = {};
    const events = [
        { atMs, name: 'partition B', fn: () => topo.relays.B.partition() },
        {
            atMs: atMs + 1000,
            name: 'probes during the cut',
            fn: async () => {
                // A fresh write through D, then a read of it WITH its token on B:
                // B cannot reach that txid, so after 2000 ms: 503 REPLICA_BEHIND.
                const w = await D.pipeline('INSERT INTO bench_kv(id, v, origin, t_us) VALUES (?, ?, ?, 0)', [{ type: 'integer', value: String(2 ** 53 - Date.now()) }, { type: 'text', value: 'probe' }, { type: 'text', value: 'probe' }]);
                const tok = w.headers['boomerang-token'];
                const rd = await B.pipeline('SELECT count(*) FROM bench_kv', [], { 'boomerang-token': tok }, 10000);
                probes.read = { status: rd.status, ms: Math.round(rd.ms), retry_after: rd.headers['retry-after'], code: rd.status ? JSON.parse(rd.body || '{}').code : rd.error };
                // A write on B, answered when the cut ends (its link is reset at heal).
                probes.writeP = B.pipeline('INSERT INTO bench_kv(id, v, origin, t_us) VALUES (?, ?, ?, 0)', [{ type: 'integer', value: String(2 ** 53 - 1 - Date.now()) }, { type: 'text', value: 'probe' }, { type: 'text', value: 'probe' }], {}, 60000);
                return probes.read;
            },
        },
        { atMs: atMs + cutMs, name: 'heal B', fn: async () => {
            await topo.relays.B.heal();
            probes.healAt = Date.now();
            // Catch-up, measured from the heal, in the background of the load.
            probes.catchupP = waitCaughtUp(topo, B, 60000).then((x) => ({ ...x, ms: Date.now() - probes.healAt }), (e) => ({ error: e.message }));
        } },
    ];
    const run = await runLoad(topo, { label: 'partition', duration, rate, visSample: 0.2, maxErrorRatio: 1, events });
    const fig = { run: 'partition', duration_s: duration, rate, cut_ms: cutMs };
    for (const e of run.events) c.add(sc, `event: ${e.name}`, !e.error, e.error ? e.error.slice(0, 60) : `at ${(e.atMs / 1000).toFixed(1)} s`, 'done');
    if (probes.read) {
        const pr = probes.read;
        c.add(sc, 'B read with a newer token during the cut', pr.status === 503 && pr.code === 'REPLICA_BEHIND' && Number(pr.retry_after) >= 1, `${pr.status} ${pr.code}`, '503 REPLICA_BEHIND');
        c.add(sc, 'B REPLICA_BEHIND after the wait budget', pr.ms >= 1900 && pr.ms <= 3000, `${pr.ms} ms`, '2000 ms (1900..3000)', { timing: true });
        fig.token_read_during_cut = pr;
    }
    if (probes.writeP) {
        const w = await probes.writeP;
        const res = w.status === 200 ? JSON.parse(w.body).results?.[0] : null;
        const how = res?.type === 'error' ? res.error.code : res ? `200 Applied:${w.headers['boomerang-applied'] ?? '1'}` : `${w.status} ${w.error || ''}`;
        const ok = (res?.type === 'error' && res.error.code === 'PROXY_ERROR') || (res?.type === 'ok' && w.headers['boomerang-applied'] === '0');
        c.add(sc, 'B write during the cut', ok, `${how} after ${(w.ms / 1000).toFixed(1)} s`, 'PROXY_ERROR or Applied: 0');
        fig.write_during_cut = { answer: how, ms: Math.round(w.ms) };
    }
    if (probes.catchupP) {
        const cu = await probes.catchupP;
        c.add(sc, 'B catches up after heal', !cu.error, cu.error ? cu.error.slice(0, 60) : `${(cu.ms / 1000).toFixed(1)} s`, 'applied ≥ head at heal, < 60 s');
        fig.catchup_ms = cu.ms ?? null;
    }
    if (!checkRun(c, sc, run)) return { run, fig };
    const r = run.report;
    // Errors: only what B's configuration allows, and B's writes must show them.
    const allowed = ['proxy_error', 'unapplied', 'replica_behind'];
    const cls = errorClasses(r, run.order, allowed);
    const unapplied = perProxy(r, B.url, 2)?.raw?.ops?.unapplied ?? perProxy(r, B.url, 2)?.raw?.unapplied ?? 0;
    c.add(sc, 'error kinds: only PROXY_ERROR/Applied:0/REPLICA_BEHIND', cls.other.length === 0, cls.other.length ? cls.other.join(',') : JSON.stringify(cls.classes), 'no other kind');
    const cut = (cls.classes.proxy_error || 0) + (cls.classes.unapplied || 0) + unapplied;
    c.add(sc, "B's writes in the cut: PROXY_ERROR or Applied:0", cut > 0, `${cls.classes.proxy_error || 0} PROXY_ERROR, ${(cls.classes.unapplied || 0) + unapplied} unapplied`, '> 0');
    const notB = ['D', 'A'].filter((n) => cls.per_proxy[n] > 0).map((n) => `${n}=${cls.per_proxy[n]}`);
    c.add(sc, 'errors only on B (D and A unaffected)', notB.length === 0, notB.length ? notB.join(',') : `B=${cls.per_proxy.B}`, 'D=0, A=0');
    fig.errors = cls;
    fig.ryw = r.ryw;
    // After the load: every sidecar at the primary's head.
    try {
        const cu = await waitCaughtUp(topo, B, 30000);
        const a = await topo.sidecars.A.status();
        c.add(sc, 'after the run: B and A at the head', a.applied_txid >= cu.head, `head ${cu.head}, B ok, A ${a.applied_txid}`, `= ${cu.head}`);
    } catch (e) {
        c.add(sc, 'after the run: B and A at the head', false, e.message.slice(0, 60), 'caught up');
    }
    return { run, fig };
}

/** Scenario 3: sidecar A is SIGKILLed and restarted mid-run; no violation. */
export async function scenarioRestart(topo, c, { duration = 15, rate = 100, atMs = 5000, downMs = 500 } = {}) {
    const sc = 'restart';
    const A = topo.sidecars.A;
    const info = {};
    const events = [
        { atMs, name: 'SIGKILL A', fn: async () => {
            A.proc.signal('SIGKILL');
            await A.proc.exited;
        } },
        { atMs: atMs + downMs, name: 'restart A', fn: async () => {
            const t0 = Date.now();
            await A.restart();
            await waitFor(async () => (await request(`${A.url}/ready`, { headers: A.headers })).status === 200, 30000, 'A ready after restart');
            info.readyMs = Date.now() - t0;
            return info.readyMs;
        } },
    ];
    const run = await runLoad(topo, { label: 'restart', duration, rate, visSample: 0.2, maxErrorRatio: 1, events });
    const fig = { run: 'restart', duration_s: duration, rate, down_ms: downMs };
    for (const e of run.events) c.add(sc, `event: ${e.name}`, !e.error, e.error ? e.error.slice(0, 60) : `at ${(e.atMs / 1000).toFixed(1)} s`, 'done');
    c.add(sc, 'A ready after restart', info.readyMs !== undefined, info.readyMs !== undefined ? `${info.readyMs} ms` : 'no', '< 30 s');
    fig.ready_ms = info.readyMs ?? null;
    if (!checkRun(c, sc, run)) return { run, fig };
    const r = run.report;
    const cls = errorClasses(r, run.order, ['connection']);
    c.add(sc, 'error kinds: only connection errors', cls.other.length === 0, cls.other.length ? cls.other.join(',') : JSON.stringify(cls.classes), 'no other kind');
    const notA = ['D', 'B'].filter((n) => cls.per_proxy[n] > 0).map((n) => `${n}=${cls.per_proxy[n]}`);
    c.add(sc, 'errors only on A (the restarted one)', notA.length === 0, notA.length ? notA.join(',') : `A=${cls.per_proxy.A}`, 'D=0, B=0');
    fig.errors = cls;
    fig.ryw = r.ryw;
    try {
        const cu = await waitCaughtUp(topo, A, 30000);
        c.add(sc, 'after the run: A at the head', true, `head ${cu.head}`, 'caught up');
    } catch (e) {
        c.add(sc, 'after the run: A at the head', false, e.message.slice(0, 60), 'caught up');
    }
    return { run, fig };
}
