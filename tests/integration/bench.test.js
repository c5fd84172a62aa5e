// boomerang-bench (tests/load/) against a real primary and two sidecars, one
// of them behind a relay that adds 20 ms each way on its link to the primary:
// the report must show the relayed sidecar's writes at >= 2 x 20 ms, the direct
// one's well under that, visibility lag in both directions, and no
// read-your-writes violation. Also its failure exits: a dead proxy (3) and
// bad flags (2).

import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';

import {
    binPath,
    itest,
    makeTmpDir,
    spawnTracked,
    startPrimary,
    startProxy,
    startRelay,
    withDeadline,
} from './helpers.js';

const RELAY_MS = 20;

/** Run boomerang-bench with argv; resolves to { code, stdout, stderr }. */
async function runBench(argv, timeoutMs = 90000) {
    const h = spawnTracked(binPath('boomerang-bench'), argv);
    const st = await withDeadline(h.exited, timeoutMs, 'boomerang-bench');
    return { code: st.code, signal: st.signal, stdout: h.stdout(), stderr: h.stderr() };
}

/** A loopback port nothing listens on (bound, then closed). */
async function deadPort() {
    const srv = net.createServer();
    await new Promise((resolve) => srv.listen(0, '127.0.0.1', resolve));
    const { port } = srv.address();
    await new Promise((resolve) => srv.close(resolve));
    return port;
}

itest('bench: relayed vs direct sidecar, lag both ways, no RYW violation, reports', { timeout: 180000 }, async () => {
    const P = await startPrimary();
    const A = await startProxy({ primaryUrl: P, args: ['--threads', '1'] });
    const R = await startRelay({ target: P, delayMs: RELAY_MS });
    const B = await startProxy({ primaryUrl: R, args: ['--threads', '1'] });
    await A.waitReady();
    await B.waitReady();

    const dir = makeTmpDir('bench-itest-');
    const json = path.join(dir, 'report.json');
    const html = path.join(dir, 'report.html');
    const svg = path.join(dir, 'chart');
    const r = await runBench([
        '--proxy', A.url, '--proxy', B.url,
        '--rate', '100', '--duration', '8', '--write-ratio', '0.3', '--clients', '4',
        '--keys', '2000', '--visibility-sample', '0.5',
        '--json', json, '--html', html, '--svg-prefix', svg,
        '--progress', 'off', '--label', 'itest-20ms',
    ]);
    const show = `exit ${r.code}\n--- stdout ---\n${r.stdout}\n--- stderr ---\n${r.stderr}`;
    assert.equal(r.code, 0, show);

    const j = JSON.parse(fs.readFileSync(json, 'utf8'));
    assert.equal(j.label, 'itest-20ms');
    assert.ok(j.ops.scheduled >= 700 && j.ops.scheduled <= 800, `scheduled ${j.ops.scheduled}\n${show}`);
    assert.equal(j.ops.overload, 0, show);
    assert.ok(j.metrics.write_ack.count > 0, show);
    assert.ok(j.metrics.read.count > 0, show);
    assert.ok(j.metrics.visibility.count > 0, show);
    assert.ok(j.metrics.server_lag_ms.count > 0, 'no /metrics sample');
    assert.equal(j.error_count, 0, `errors ${JSON.stringify(j.errors)}`);

    // Write ack: the relayed sidecar pays a round trip through the relay.
    const [pa, pb] = j.per_proxy;
    assert.equal(pa.url, A.url);
    assert.equal(pb.url, B.url);
    assert.ok(pb.write_ack.count > 0 && pa.write_ack.count > 0, show);
    assert.ok(pb.write_ack.p50_us >= 2 * RELAY_MS * 1000, `relayed write_ack p50 ${pb.write_ack.p50_us} us\n${show}`);
    assert.ok(pa.write_ack.p50_us < RELAY_MS * 1000, `direct write_ack p50 ${pa.write_ack.p50_us} us\n${show}`);

    // Visibility both ways. A -> B crosses the relay once (about 20 ms after
    // A's ack); B -> A is usually applied on A before B's answer is back
    // (recorded as 0 and counted in before_ack).
    const ab = pa.visibility_to.find((v) => v.to === 1);
    const ba = pb.visibility_to.find((v) => v.to === 0);
    assert.ok(ab.count > 0 && ba.count > 0, `visibility pairs ${JSON.stringify({ ab, ba })}`);
    assert.ok(ab.p50_us >= RELAY_MS * 1000 * 0.5, `A->B visibility p50 ${ab.p50_us} us`);
    assert.ok(ab.p99_us < RELAY_MS * 1000 * 5, `A->B visibility p99 ${ab.p99_us} us`);
    assert.equal(j.visibility_probes.lost, 0);
    assert.ok(ba.before_ack > 0, `B->A before_ack ${JSON.stringify(ba)}`);

    // Read-your-writes.
    assert.ok(j.ryw.reads > 0, show);
    assert.equal(j.ryw.violations, 0, show);
    assert.match(r.stdout, /ryw violations: 0 of \d+ reads with a token/);
    assert.match(r.stdout, /^write_ack\s+\d+\s/m);
    assert.match(r.stdout, /^visibility p0->p1\s+\d+\s/m);

    // Timeline: one row per second with the contract's fields.
    assert.ok(j.timeline.length >= 7, `timeline ${j.timeline.length} rows`);
    for (const k of ['t_s', 'write_ack_p50_us', 'write_ack_p99_us', 'read_p99_us', 'visibility_p99_us', 'server_lag_ms_max', 'ops']) {
        assert.ok(k in j.timeline[1], `timeline field ${k}`);
    }

    const page = fs.readFileSync(html, 'utf8');
    assert.match(page, /<svg[\s>]/);
    assert.ok((page.match(/<svg/g) || []).length >= 2, 'timeline and distribution charts');
    for (const row of ['write_ack', 'read', 'ryw_read', 'visibility', 'server_lag', 'visibility p0-&gt;p1']) {
        assert.ok(page.includes(`<td>${row}</td>`), `HTML summary row ${row}`);
    }
    assert.ok(!/https?:\/\/(?!127\.0\.0\.1|www\.w3\.org)/.test(page), 'the HTML fetches nothing');
    for (const f of ['timeline', 'distribution']) {
        const s = fs.readFileSync(`${svg}-${f}.svg`, 'utf8');
        assert.match(s, /^<\?xml[^>]*>\s*<svg /);
        assert.match(s, /<polyline /);
        assert.match(s, /<\/svg>\s*$/);
    }
});

itest('bench: an unreachable proxy exits 3 with the reason', async () => {
    const port = await deadPort();
    const r = await runBench(['--proxy', `http://127.0.0.1:${port}`, '--duration', '1', '--progress', 'off'], 30000);
    assert.equal(r.code, 3, `exit ${r.code}\n${r.stderr}`);
    assert.match(r.stderr, new RegExp(`setup failed: proxy http://127\\.0\\.0\\.1:${port}: connect failed: Connection refused`));
    assert.equal(r.stdout, '');
});

itest('bench: --app-token-file sends the bearer a token-protected sidecar needs', { timeout: 60000 }, async () => {
    const dir = makeTmpDir('boomerang-bench-auth-');
    const tokens = path.join(dir, 'tokens');
    fs.writeFileSync(tokens, 'bench-secret-token\n');
    const P = await startPrimary();
    const S = await startProxy({ primaryUrl: P, args: ['--app-token-file', tokens], bearer: 'bench-secret-token' });
    await S.waitReady();
    const argv = ['--proxy', S.url, '--duration', '1', '--rate', '50', '--keys', '0', '--progress', 'off'];
    const without = await runBench(argv, 30000);
    assert.equal(without.code, 3, `without the token: exit ${without.code}\n${without.stderr}`);
    assert.match(without.stderr, /401/);
    const withTok = await runBench([...argv, '--app-token-file', tokens], 30000);
    assert.equal(withTok.code, 0, `with the token: exit ${withTok.code}\n${withTok.stderr}`);
    assert.match(withTok.stdout, /ryw violations: 0 of [1-9]/);
    const empty = path.join(dir, 'empty');
    fs.writeFileSync(empty, '\n');
    const bad = await runBench([...argv, '--app-token-file', empty], 10000);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /no token on its first line/);
    const missing = await runBench([...argv, '--app-token-file', path.join(dir, 'nope')], 10000);
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /No such file/);
});

itest('bench: bad flags exit 2 with a message', async () => {
    const cases = [
        [[], /at least one --proxy/],
        [['--proxy', 'http://127.0.0.1:1', '--rate', '-1'], /--rate -1: must be between/],
        [['--proxy', 'http://127.0.0.1:1', '--write-ratio', 'x'], /--write-ratio x: not a number/],
        [['--proxy', 'ftp://127.0.0.1:1'], /expected http:\/\/HOST:PORT/],
        [['--proxy', 'http://127.0.0.1:1', '--bogus'], /bad or incomplete flag --bogus/],
        [['--proxy', 'http://127.0.0.1:1', '--progress', 'sometimes'], /expected auto, on or off/],
        [['--proxy', 'http://127.0.0.1:1', '--duration', '0'], /needs a --count bound/],
    ];
    for (const [argv, re] of cases) {
        const r = await runBench(argv, 10000);
        assert.equal(r.code, 2, `${argv.join(' ')}: exit ${r.code}\n${r.stderr}`);
        assert.match(r.stderr, re, argv.join(' '));
    }
    const help = await runBench(['--help'], 10000);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /--visibility-sample/);
});
