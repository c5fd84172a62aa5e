#!/usr/bin/env node
// A stand-in for boomerang-bench, used by the region test while the real bench
// (tests/load/, bin/boomerang-bench) is not built. It takes the subset of the
// bench's flags the region test passes (notes: bench-contract.md) and writes a
// JSON report of the same shape, so the test's assertions are written once,
// against the contract, and run unchanged on either program.
//
//   node loadgen.mjs --proxy URL [--proxy URL ...] [--clients N] [--rate R]
//     [--write-ratio F] [--duration S] [--visibility-sample F] [--json FILE]
//     [--label NAME] [--bearer-file F] [--max-error-ratio F] [--no-setup]
//
// Open loop: operation k is due at start + k/rate and its latency is measured
// from that instant, so a stalled sidecar shows up as latency, not as a lower
// rate (no coordinated omission). Operations go round-robin over the proxies.
// A write is an INSERT of one row with a fresh random id; after a successful
// write, a read of that row WITH the write's Boomerang-Token goes to a random
// proxy (a miss is a read-your-writes violation), and a sampled write is probed
// on every other proxy WITHOUT a token (Boomerang-Consistency: local) every
// 1 ms until the row appears: visibility lag = first seen - write ack.
// Latencies are kept as exact samples (the runs are short), not histograms.
//
// Exit codes (as the bench): 0 ok; 1 a violation, a lost probe or too many
// errors; 2 bad flags; 3 setup failed.
import fs from 'node:fs';
import http from 'node:http';
import { performance } from 'node:perf_hooks';

const USAGE = 'usage: loadgen.mjs --proxy URL [--proxy URL ...] [--rate R] [--duration S] ...';

function parseArgs(argv) {
    const o = {
        proxies: [],
        clients: 16,
        rate: 200,
        writeRatio: 0.2,
        duration: 30,
        rowBytes: 100,
        visSample: 0.1,
        json: null,
        label: '',
        bearer: null,
        maxErrorRatio: 0.01,
        setup: true,
        probeGiveUpMs: 30000,
        timeoutMs: 60000,
    };
    const num = (s, name) => {
        const v = Number(s);
        if (!Number.isFinite(v) || v < 0) throw new Error(`${name}: not a number: ${s}`);
        return v;
    };
    for (let i = 0; i < argv.length; i++) {
        const a = argv[i];
        const val = () => {
            if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
            return argv[++i];
        };
        switch (a) {
            case '--proxy': o.proxies.push(val().replace(/\/+$/, '')); break;
            case '--clients': o.clients = num(val(), a); break;
            case '--rate': o.rate = num(val(), a); break;
            case '--write-ratio': o.writeRatio = num(val(), a); break;
            case '--duration': o.duration = num(val(), a); break;
            case '--row-bytes': o.rowBytes = num(val(), a); break;
            case '--visibility-sample': o.visSample = num(val(), a); break;
            case '--json': o.json = val(); break;
            case '--label': o.label = val(); break;
            case '--bearer-file': o.bearer = fs.readFileSync(val(), 'utf8').split('\n')[0].trim(); break;
            case '--max-error-ratio': o.maxErrorRatio = num(val(), a); break;
            case '--no-setup': o.setup = false; break;
            case '--progress': val(); break;
            default: throw new Error(`unknown flag ${a}`);
        }
    }
    if (!o.proxies.length || o.rate <= 0 || o.clients < 1) throw new Error('need --proxy, --rate > 0, --clients >= 1');
    return o;
}

// ---------------------------------------------------------------- statistics

function stats(samples) {
    const n = samples.length;
    if (!n) return { count: 0, p50_us: 0, p90_us: 0, p99_us: 0, p999_us: 0, max_us: 0, mean_us: 0 };
    const s = Float64Array.from(samples).sort();
    const q = (p) => Math.round(s[Math.min(n - 1, Math.ceil(p * n) - 1)]); // nearest rank
    const mean = s.reduce((a, b) => a + b, 0) / n;
    return { count: n, p50_us: q(0.5), p90_us: q(0.9), p99_us: q(0.99), p999_us: q(0.999), max_us: Math.round(s[n - 1]), mean_us: Math.round(mean) };
}

// ---------------------------------------------------------------- HTTP

function pipeline(proxy, stmt, args, headers = {}, timeoutMs) {
    const body = JSON.stringify({ requests: [{ type: 'execute', stmt: { sql: stmt, args } }, { type: 'close' }] });
    return new Promise((resolve) => {
        const h = { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), ...headers };
        if (proxy.bearer) h.authorization = `Bearer ${proxy.bearer}`;
        const req = http.request({ host: proxy.host, port: proxy.port, path: '/v2/pipeline', method: 'POST', agent: proxy.agent, headers: h }, (res) => {
            const chunks = [];
            res.on('data', (d) => chunks.push(d));
            res.on('end', () => {
                let json = null;
                try {
                    json = JSON.parse(Buffer.concat(chunks).toString('utf8'));
                } catch {
                    /* classified below */
                }
                resolve({ status: res.statusCode, headers: res.headers, json });
            });
            res.on('error', (e) => resolve({ status: 0, err: e }));
        });
        req.setTimeout(timeoutMs, () => req.destroy(Object.assign(new Error('timeout'), { code: 'TIMEOUT' })));
        req.on('error', (e) => resolve({ status: 0, err: e }));
        req.end(body);
    });
}

/** The error kind of an answer, or null for an ok result (result 0). */
function errorKind(r) {
    if (r.status === 0) return r.err?.code === 'TIMEOUT' ? 'timeout' : 'connection';
    if (r.status !== 200) return r.json?.code || `http_${r.status}`;
    const res = r.json?.results?.[0];
    if (!res) return 'bad_response';
    if (res.type === 'error') return res.error?.code || 'hrana_error';
    return null;
}

function getText(proxy, p) {
    return new Promise((resolve) => {
        const headers = proxy.bearer ? { authorization: `Bearer ${proxy.bearer}` } : {};
        const req = http.get({ host: proxy.host, port: proxy.port, path: p, agent: proxy.probeAgent, headers }, (res) => {
            const chunks = [];
            res.on('data', (d) => chunks.push(d));
            res.on('end', () => resolve(res.statusCode === 200 ? Buffer.concat(chunks).toString('utf8') : null));
        });
        req.setTimeout(2000, () => req.destroy());
        req.on('error', () => resolve(null));
    });
}

// ---------------------------------------------------------------- the run

async function main() {
    let o;
    try {
        o = parseArgs(process.argv.slice(2));
    } catch (e) {
        process.stderr.write(`loadgen: ${e.message}\n${USAGE}\n`);
        return 2;
    }
    const proxies = o.proxies.map((url, i) => {
        const u = new URL(url);
        return {
            i, url, host: u.hostname, port: Number(u.port || 80), bearer: o.bearer,
            agent: new http.Agent({ keepAlive: true, maxSockets: o.clients }),
            probeAgent: new http.Agent({ keepAlive: true, maxSockets: 4 }),
            writeAck: [], read: [], serverLag: [], errors: {}, writes: 0, reads: 0, unapplied: 0,
            visTo: o.proxies.map(() => []),
        };
    });
    const errors = {};
    const countErr = (p, op, kind) => {
        const k = `${op}.${kind}`;
        errors[k] = (errors[k] || 0) + 1;
        p.errors[k] = (p.errors[k] || 0) + 1;
    };
    const ryw = { reads: 0, violations: 0 };
    let lost = 0;
    const visAll = [];
    const timeline = [];
    const written = [];
    const t0 = performance.now();
    const startedAt = new Date().toISOString();
    const nowUs = () => (performance.now() - t0) * 1000;
    const bucket = (us) => {
        const s = Math.floor(us / 1e6);
        while (timeline.length <= s) timeline.push({ t_s: timeline.length, wa: [], rd: [], vis: [], ops: 0 });
        return timeline[s];
    };

    if (o.setup) {
        const r = await pipeline(proxies[0], 'CREATE TABLE IF NOT EXISTS bench_kv(id INTEGER PRIMARY KEY, v TEXT, origin TEXT, t_us INTEGER)', [], {}, 30000);
        if (errorKind(r)) {
            process.stderr.write(`loadgen: setup failed on ${proxies[0].url}: ${r.status} ${r.err?.message || JSON.stringify(r.json)}\n`);
            return 3;
        }
        // Every proxy must have the table before the run: a statement that does
        // not prepare on a replica is forwarded to the primary, and would make a
        // visibility probe see rows early. A read with the setup's token waits.
        for (const p of proxies) {
            const rr = await pipeline(p, 'SELECT count(*) FROM bench_kv', [], { 'boomerang-token': r.headers['boomerang-token'] }, 30000);
            if (errorKind(rr)) {
                process.stderr.write(`loadgen: setup failed on ${p.url}: ${rr.status} ${rr.err?.message || JSON.stringify(rr.json)}\n`);
                return 3;
            }
        }
    }

    const probe = async (w, rd, id, ackUs) => {
        const deadline = ackUs + o.probeGiveUpMs * 1000;
        for (;;) {
            const r = await pipeline(rd, 'SELECT id FROM bench_kv WHERE id = ?', [{ type: 'integer', value: String(id) }], { 'boomerang-consistency': 'local' }, 5000);
            const seen = nowUs();
            if (!errorKind(r) && r.json.results[0].response.result.rows.length) {
                const lag = Math.max(0, seen - ackUs);
                w.visTo[rd.i].push(lag);
                visAll.push(lag);
                bucket(seen).vis.push(lag);
                return;
            }
            if (seen > deadline) {
                lost++;
                return;
            }
            await new Promise((resolve) => setTimeout(resolve, 1)); // the probe interval
        }
    };

    const doWrite = async (p, dueUs) => {
        const id = 1 + Math.floor(Math.random() * 2 ** 52);
        const v = 'x'.repeat(o.rowBytes);
        p.writes++;
        const r = await pipeline(p, 'INSERT INTO bench_kv(id, v, origin, t_us) VALUES (?, ?, ?, ?)',
            [{ type: 'integer', value: String(id) }, { type: 'text', value: v }, { type: 'text', value: p.url }, { type: 'integer', value: String(Math.round(dueUs)) }], {}, o.timeoutMs);
        const ackUs = nowUs();
        const kind = errorKind(r);
        if (kind) return countErr(p, 'write', kind);
        if (r.headers['boomerang-applied'] === '0') p.unapplied++;
        p.writeAck.push(ackUs - dueUs);
        bucket(dueUs).wa.push(ackUs - dueUs);
        written.push(id);
        const token = r.headers['boomerang-token'];
        const tasks = [];
        if (Math.random() < o.visSample) {
            for (const rd of proxies) if (rd !== p) tasks.push(probe(p, rd, id, ackUs));
        }
        const rp = proxies[Math.floor(Math.random() * proxies.length)];
        tasks.push((async () => {
            const rr = await pipeline(rp, 'SELECT id FROM bench_kv WHERE id = ?', [{ type: 'integer', value: String(id) }], token ? { 'boomerang-token': token } : {}, o.timeoutMs);
            const k = errorKind(rr);
            if (k) return countErr(rp, 'ryw_read', k);
            ryw.reads++;
            if (!rr.json.results[0].response.result.rows.length) ryw.violations++;
        })());
        await Promise.all(tasks);
    };

    const doRead = async (p, dueUs) => {
        const id = written.length ? written[Math.floor(Math.random() * written.length)] : 0;
        p.reads++;
        const r = await pipeline(p, 'SELECT v FROM bench_kv WHERE id = ?', [{ type: 'integer', value: String(id) }], {}, o.timeoutMs);
        const kind = errorKind(r);
        if (kind) return countErr(p, 'read', kind);
        const lat = nowUs() - dueUs;
        p.read.push(lat);
        bucket(dueUs).rd.push(lat);
    };

    // Server-side lag from each sidecar's /metrics, once a second.
    const scrape = setInterval(async () => {
        for (const p of proxies) {
            const text = await getText(p, '/metrics');
            const m = text && /^boomerang_replica_lag_seconds(?:\{[^}]*\})? ([0-9.eE+-]+)$/m.exec(text);
            if (m) p.serverLag.push(Number(m[1]) * 1e3);
        }
    }, 1000);

    const inflight = new Set();
    const total = Math.floor(o.rate * o.duration);
    let k = 0;
    await new Promise((resolve) => {
        const tick = () => {
            const now = nowUs();
            while (k < total && (k * 1e6) / o.rate <= now) {
                const due = (k * 1e6) / o.rate;
                const p = proxies[k % proxies.length];
                bucket(due).ops++;
                const op = Math.random() < o.writeRatio ? doWrite(p, due) : doRead(p, due);
                inflight.add(op);
                op.finally(() => inflight.delete(op));
                k++;
            }
            if (k >= total) return resolve();
            setTimeout(tick, 2); // the arrival clock
        };
        tick();
    });
    await Promise.all([...inflight]);
    clearInterval(scrape);
    for (const p of proxies) {
        p.agent.destroy();
        p.probeAgent.destroy();
    }

    const durationS = nowUs() / 1e6;
    const all = (f) => proxies.flatMap(f);
    const serverLagMs = (xs) => stats(xs.map((x) => x * 1000)); // ms values through the µs stats
    const report = {
        label: o.label,
        generator: 'tests/regions/loadgen.mjs',
        config: { proxies: o.proxies, clients: o.clients, rate: o.rate, write_ratio: o.writeRatio, duration_s: o.duration, row_bytes: o.rowBytes, visibility_sample: o.visSample },
        started_at: startedAt,
        duration_s: durationS,
        ops: { writes: all((p) => [p.writes]).reduce((a, b) => a + b, 0), reads: all((p) => [p.reads]).reduce((a, b) => a + b, 0), unapplied: all((p) => [p.unapplied]).reduce((a, b) => a + b, 0), visibility_lost: lost },
        metrics: { write_ack: stats(all((p) => p.writeAck)), read: stats(all((p) => p.read)), visibility: stats(visAll), server_lag_ms: serverLagMs(all((p) => p.serverLag)) },
        per_proxy: proxies.map((p) => ({
            proxy: p.url,
            ops: { writes: p.writes, reads: p.reads, unapplied: p.unapplied },
            write_ack: stats(p.writeAck),
            read: stats(p.read),
            server_lag_ms: serverLagMs(p.serverLag),
            errors: p.errors,
        })),
        visibility_pairs: proxies.flatMap((w) => proxies.filter((r) => r !== w).map((r) => ({ from: w.url, to: r.url, ...stats(w.visTo[r.i]) }))),
        ryw,
        errors,
        timeline: timeline.map((b) => ({ t_s: b.t_s, write_ack_p50_us: stats(b.wa).p50_us, write_ack_p99_us: stats(b.wa).p99_us, read_p99_us: stats(b.rd).p99_us, visibility_p99_us: stats(b.vis).p99_us, ops: b.ops })),
    };
    if (o.json) fs.writeFileSync(o.json, JSON.stringify(report, null, 1));
    const ms = (us) => (us >= 1000 ? `${(us / 1000).toFixed(1)}ms` : `${us}us`);
    const line = (name, s) => `${name.padEnd(12)} ${String(s.count).padStart(7)} ${ms(s.p50_us).padStart(9)} ${ms(s.p90_us).padStart(9)} ${ms(s.p99_us).padStart(9)} ${ms(s.p999_us).padStart(9)} ${ms(s.max_us).padStart(9)}`;
    const out = [`metric         count       p50       p90       p99     p99.9       max`, line('write_ack', report.metrics.write_ack), line('read', report.metrics.read), line('visibility', report.metrics.visibility)];
    const nerr = Object.values(errors).reduce((a, b) => a + b, 0);
    out.push(`ryw violations: ${ryw.violations} of ${ryw.reads} reads with a token; visibility lost: ${lost}; errors: ${nerr} ${JSON.stringify(errors)}`);
    process.stdout.write(out.join('\n') + '\n');
    const ops = report.ops.writes + report.ops.reads;
    if (ryw.violations || lost || (ops && nerr / ops > o.maxErrorRatio)) return 1;
    return 0;
}

main().then(
    (code) => process.exit(code),
    (e) => {
        process.stderr.write(`loadgen: ${e.stack || e}\n`);
        process.exit(1);
    },
);
