// The fault relay (tests/tools/relay.c) against node servers on loopback:
// delay (RTT), data integrity and half-close, rate cap, backpressure,
// partition and heal by signal, the control socket, and reset.

import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import net from 'node:net';
import path from 'node:path';

import { after } from 'node:test';

import { binPath, itest, makeTmpDir, pause, spawnTracked, waitFor, withDeadline } from './helpers.js';

const cleanups = []; // servers and sockets to close, even when a test fails
after(() => Promise.all(cleanups.splice(0).map((f) => f())));

// ---------------------------------------------------------------- plumbing

/** A node TCP server on an ephemeral loopback port; onConn(socket) per client. */
async function startServer(onConn) {
    const sockets = new Set();
    const srv = net.createServer({ noDelay: true }, (s) => {
        sockets.add(s);
        s.on('close', () => sockets.delete(s));
        s.on('error', () => {}); // resets are part of these tests
        onConn(s);
    });
    await new Promise((resolve) => srv.listen(0, '127.0.0.1', resolve));
    const close = () => {
        for (const s of sockets) s.destroy();
        return srv.listening ? new Promise((resolve) => srv.close(resolve)) : null;
    };
    cleanups.push(close);
    return { port: srv.address().port, sockets, close };
}

const startEcho = () => startServer((s) => s.pipe(s));

/** Start the relay in front of port; resolves to its handle plus .port and .ctl (control path). */
async function startRelay(targetPort, args = []) {
    const ctl = path.join(makeTmpDir('relay-itest-'), 'ctl.sock');
    const argv = ['--listen', '127.0.0.1:0', '--target', `127.0.0.1:${targetPort}`, '--control', ctl, ...args];
    const h = spawnTracked(binPath('relay'), argv);
    h.server = true; // runs until signalled, exits 0 on SIGTERM (checked by stopAll)
    const m = await waitFor(
        () => {
            if (h.exitStatus) throw Object.assign(new Error(`relay exited\n${h.tail()}`), { fatal: true });
            return /relay listening on 127\.0\.0\.1:(\d+)/.exec(h.stderr());
        },
        { what: '"relay listening on" from relay' },
    );
    h.port = Number(m[1]);
    h.ctl = ctl;
    return h;
}

/** Connect to port; resolves to the socket, which records whether it saw an error or close. */
function connect(port) {
    return new Promise((resolve, reject) => {
        const s = net.connect({ port, host: '127.0.0.1', noDelay: true }, () => {
            s.off('error', reject);
            resolve(s);
        });
        s.once('error', reject);
        s.on('error', (e) => (s.lastError = e));
        s.on('close', () => (s.closedAt = Date.now()));
        cleanups.push(() => s.destroy());
    });
}

/** Connect to port and resolve to the code of the error that ends the socket (or 'closed'). */
function resetCode(port) {
    return withDeadline(
        new Promise((resolve) => {
            const s = net.connect({ port, host: '127.0.0.1' });
            cleanups.push(() => s.destroy());
            let code = 'closed';
            s.on('error', (e) => (code = e.code)); // the reset can come before or after connect
            s.on('close', () => resolve(code));
        }),
        5000,
        'a connection to be reset',
    );
}

/** Collects what arrives on s; next(n) resolves once n more bytes arrived. */
function reader(s) {
    const chunks = [];
    let have = 0;
    let waiters = [];
    s.on('data', (d) => {
        chunks.push(d);
        have += d.length;
        waiters = waiters.filter((w) => (have >= w.n ? (w.resolve(), false) : true));
    });
    return {
        get length() {
            return have;
        },
        bytes: () => Buffer.concat(chunks),
        until: (n) => (have >= n ? Promise.resolve() : new Promise((resolve) => waiters.push({ n, resolve }))),
    };
}

/** One ping over an echo connection; resolves to the RTT in ms. */
async function ping(s, r, ms = 5000) {
    const t0 = process.hrtime.bigint();
    s.write('p');
    await withDeadline(r.until(r.length + 1), ms, 'ping');
    return Number(process.hrtime.bigint() - t0) / 1e6;
}

/** Send one control command; resolves to the answer line (without the newline). */
function control(ctl, cmd) {
    return withDeadline(
        new Promise((resolve, reject) => {
            const c = net.connect(ctl);
            let got = '';
            c.on('error', reject);
            c.on('data', (d) => {
                got += d;
                if (got.includes('\n')) {
                    c.end();
                    resolve(got.slice(0, got.indexOf('\n')));
                }
            });
            c.write(`${cmd}\n`);
        }),
        5000,
        `control ${cmd}`,
    );
}

const status = async (h) => JSON.parse(await control(h.ctl, 'status'));
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

// ---------------------------------------------------------------- tests

itest('a 20 ms one-way delay makes a loopback ping take 40 ms or more', async (t) => {
    const echo = await startEcho();
    const relay = await startRelay(echo.port, ['--delay-ms', '20']);
    const direct = await connect(echo.port);
    const dr = reader(direct);
    const s = await connect(relay.port);
    const r = reader(s);
    const base = [];
    const rtts = [];
    for (let i = 0; i < 20; i++) base.push(await ping(direct, dr));
    for (let i = 0; i < 20; i++) rtts.push(await ping(s, r));
    t.diagnostic(`direct RTT median ${median(base).toFixed(3)} ms; through relay: min ${Math.min(...rtts).toFixed(2)} median ${median(rtts).toFixed(2)} max ${Math.max(...rtts).toFixed(2)} ms`);
    assert.ok(Math.min(...rtts) >= 40, `every RTT >= 40 ms: ${rtts}`);
    assert.ok(Math.max(...rtts) < 200, `every RTT < 200 ms: ${rtts}`);
    direct.destroy();
    s.destroy();
    await relay.stop();
    await echo.close();
});

itest('5 MB each way arrive intact, in order, and EOF is passed on after the data', async () => {
    const echo = await startEcho();
    const relay = await startRelay(echo.port, ['--delay-ms', '5', '--jitter-ms', '10']);
    const s = await connect(relay.port);
    const r = reader(s);
    const ended = new Promise((resolve) => s.on('end', resolve));
    const data = crypto.randomBytes(5 * 1024 * 1024);
    for (let off = 0; off < data.length; off += 100000) s.write(data.subarray(off, off + 100000));
    s.end(); // half-close: the echo server ends its side once it has echoed everything
    await withDeadline(ended, 30000, 'EOF back from the echo server');
    assert.equal(r.length, data.length);
    assert.ok(r.bytes().equals(data), 'the echoed bytes equal the sent bytes');
    const st = await status(relay);
    assert.equal(st.bytes_up, data.length);
    assert.equal(st.bytes_down, data.length);
    await waitFor(async () => (await status(relay)).connections === 0, { what: 'the relay to close the finished pair' });
    await relay.stop();
    await echo.close();
});

itest('--rate-kbps caps the throughput of each direction', async (t) => {
    const echo = await startEcho();
    const relay = await startRelay(echo.port, ['--rate-kbps', '8000']); // 1 MB/s
    const s = await connect(relay.port);
    const r = reader(s);
    const data = crypto.randomBytes(512 * 1024);
    const t0 = Date.now();
    s.write(data);
    await withDeadline(r.until(data.length), 20000, 'the capped transfer');
    const ms = Date.now() - t0;
    t.diagnostic(`512 KiB echoed at 1 MB/s per direction in ${ms} ms`);
    assert.ok(ms >= 400 && ms < 5000, `took ${ms} ms`);
    assert.ok(r.bytes().equals(data));
    s.destroy();
    await relay.stop();
    await echo.close();
});

itest('a target that does not read stops the relay reading (backpressure), then all arrives', async (t) => {
    let got = 0;
    let target = null;
    const sink = await startServer((sock) => {
        target = sock;
        sock.pause();
        sock.on('data', (d) => (got += d.length));
    });
    const relay = await startRelay(sink.port);
    const s = await connect(relay.port);
    const total = 256 * 1024 * 1024;
    const block = Buffer.alloc(1024 * 1024, 7);
    for (let i = 0; i < total / block.length; i++) s.write(block);
    // Wait until the client's output stops shrinking: everything the path buffers is full.
    let last = -1;
    let still = 0;
    await waitFor(
        async () => {
            const now = s.writableLength;
            still = now === last ? still + 1 : 0;
            last = now;
            await pause(20); // sampling interval for "stopped shrinking"
            return still >= 10;
        },
        { timeoutMs: 30000, what: 'the client output to stall' },
    );
    const taken = total - s.writableLength;
    t.diagnostic(`the path took ${(taken / 1048576).toFixed(1)} MiB of ${total / 1048576} MiB before stalling`);
    assert.ok(taken < 64 * 1048576, `the relay stopped reading: ${taken} bytes taken`);
    target.resume();
    await waitFor(() => got === total, { timeoutMs: 60000, what: `all ${total} bytes at the target (${got})` });
    s.destroy();
    await relay.stop();
    await sink.close();
});

itest('partition (SIGUSR1) blackholes old and new connections; heal (SIGUSR2) closes them and new ones work', async () => {
    const echo = await startEcho();
    const relay = await startRelay(echo.port);
    const s = await connect(relay.port);
    const r = reader(s);
    await ping(s, r);
    relay.signal('SIGUSR1');
    await waitFor(async () => (await status(relay)).state === 'partition', { what: 'state partition' });
    const s2 = await connect(relay.port); // accepted, then blackholed
    const r2 = reader(s2);
    s.write('lost');
    s2.write('lost too');
    await pause(300); // observation window: nothing may come back in it
    assert.equal(r.length, 1, 'no delivery during the partition');
    assert.equal(r2.length, 0, 'a new connection is blackholed too');
    assert.equal(s.closedAt, undefined, 'the blackholed connection stays open');
    const st = await status(relay);
    assert.equal(st.connections, 2);
    assert.equal(st.bytes_up, 1, 'the dropped bytes never reached the target');
    relay.signal('SIGUSR2');
    await waitFor(() => s.closedAt && s2.closedAt, { what: 'heal to close the blackholed connections' });
    const s3 = await connect(relay.port);
    const r3 = reader(s3);
    await ping(s3, r3);
    assert.equal((await status(relay)).state, 'ok');
    s3.destroy();
    await relay.stop();
    await echo.close();
});

itest('the control socket answers status, changes the delay and rejects nonsense', async () => {
    const echo = await startEcho();
    const relay = await startRelay(echo.port, ['--delay-ms', '50']);
    let st = await status(relay);
    assert.deepEqual(st, { connections: 0, state: 'ok', delay_ms: 50, bytes_up: 0, bytes_down: 0 });
    const s = await connect(relay.port);
    const r = reader(s);
    assert.ok((await ping(s, r)) >= 100, 'the 50 ms delay applies both ways');
    assert.equal(await control(relay.ctl, 'delay 0'), 'ok');
    assert.ok((await ping(s, r)) < 50, 'delay 0 applies to new data at once');
    st = await status(relay);
    assert.deepEqual(st, { connections: 1, state: 'ok', delay_ms: 0, bytes_up: 2, bytes_down: 2 });
    assert.match(await control(relay.ctl, 'frobnicate'), /^error: /);
    assert.match(await control(relay.ctl, 'delay -3'), /^error: /);
    assert.match(await control(relay.ctl, 'x'.repeat(1000)), /^error: line too long/);
    s.destroy();
    await relay.stop();
    await echo.close();
});

itest('reset (control and SIGHUP) closes clients with RST and refuses new ones until heal', async () => {
    const echo = await startEcho();
    const relay = await startRelay(echo.port);
    const s = await connect(relay.port);
    await ping(s, reader(s));
    assert.equal(await control(relay.ctl, 'reset'), 'ok');
    await waitFor(() => s.closedAt, { what: 'the reset to close the client' });
    assert.equal(s.lastError?.code, 'ECONNRESET');
    await waitFor(() => echo.sockets.size === 0, { what: 'the reset to close the target side' });
    // The kernel accepts; the relay resets at once.
    assert.equal(await resetCode(relay.port), 'ECONNRESET', 'a new connection is reset');
    assert.equal(await control(relay.ctl, 'heal'), 'ok');
    const s3 = await connect(relay.port);
    await ping(s3, reader(s3));
    relay.signal('SIGHUP');
    await waitFor(() => s3.closedAt, { what: 'SIGHUP to reset the client' });
    assert.equal(s3.lastError?.code, 'ECONNRESET');
    assert.equal((await status(relay)).state, 'reset');
    await relay.stop();
    await echo.close();
});

itest('a target that refuses connections makes the relay reset the client', async () => {
    const echo = await startEcho();
    const port = echo.port;
    await echo.close(); // nothing listens there now
    const relay = await startRelay(port);
    assert.equal(await resetCode(relay.port), 'ECONNRESET');
    assert.match(relay.stderr(), /connect to 127\.0\.0\.1:\d+ failed: Connection refused/);
    await relay.stop();
});
