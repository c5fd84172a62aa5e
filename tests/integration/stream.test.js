// boomerang.v1.Replication/Subscribe as a grpc-js client sees it: Hello, snapshots
// and their reasons, transactions from the log, heartbeats, flow control, and the
// ordering of a transaction's frames before the Execute response on one connection.
//
// A subscriber here is a small model of a replica (class Sub): it checks the
// stream's shape as events arrive (Hello first, pages ascending, txids without
// gaps, `first`/`last` flags) and can rebuild the database file from the pages,
// which python's sqlite3 then reads and compares with the primary.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before } from 'node:test';

import {
    Code,
    Metadata,
    exec1,
    grpc,
    itest,
    makeClient,
    makeTmpDir,
    protoPackage,
    run,
    scalar,
    skipNoBinary,
    startPrimary,
    stmt,
    stopAll,
    waitFor,
    withDeadline,
} from './helpers.js';

const SUBSCRIBE = '/boomerang.v1.Replication/Subscribe';
const EXECUTE = '/boomerang.v1.Primary/Execute';
const MiB = 1024 * 1024;

let P; // the file's primary (default flags)
let c; // its Primary client

before(async () => {
    if (skipNoBinary()) return;
    P = await startPrimary();
    c = makeClient(P.addr);
    await exec1(c, 'CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)');
}, { timeout: 30000 });

after(async () => {
    if (c) c.close();
    await stopAll();
}, { timeout: 60000 });

// ---------------------------------------------------------------- plumbing

function methods() {
    const pkg = protoPackage();
    return { sub: pkg.Replication.service.Subscribe, exec: pkg.Primary.service.Execute };
}

/**
 * A bare grpc-js client on its own connection (used for Subscribe and Execute
 * alike). `window`: the HTTP/2 flow-control window it grants (grpc-js's default
 * is 64 KiB; the sidecar's client grants 8 MiB per stream).
 */
function rawClient(addr, { window } = {}) {
    return new grpc.Client(addr, grpc.credentials.createInsecure(), {
        'grpc.max_receive_message_length': 64 * MiB,
        'grpc.max_send_message_length': 64 * MiB,
        'grpc.use_local_subchannel_pool': 1,
        ...(window ? { 'grpc-node.flow_control_window': window } : {}),
    });
}

/** Execute on a bare client; resolves to the ExecuteResponse. */
function rawExecute(client, sql, args = []) {
    const m = methods().exec;
    return new Promise((resolve, reject) => {
        client.makeUnaryRequest(
            EXECUTE,
            m.requestSerialize,
            m.responseDeserialize,
            { statements: [stmt(sql, args)] },
            new Metadata(),
            { deadline: Date.now() + 15000 },
            (err, res) => (err ? reject(err) : resolve(res)),
        );
    });
}

/**
 * A subscriber. Records every event with its arrival time, checks the shape of
 * the stream as it goes (problems[]), and optionally rebuilds the database in
 * `file` from the pages.
 */
class Sub {
    constructor(client, req, { file = null, raw = false } = {}) {
        const m = methods().sub;
        this.events = [];
        this.problems = [];
        this.txns = new Map(); // txid -> { checksum, chunks, npages }
        this.snapshots = []; // { txid, reason, chunks, npages, checksum, db_pages }
        this.heartbeats = [];
        this.applied = null; // last complete txn or snapshot txid (BigInt)
        this.file = file;
        this.ended = false;
        this.cur = null; // transaction or snapshot in progress
        const ser = raw ? (b) => b : m.requestSerialize;
        this.call = client.makeServerStreamRequest(SUBSCRIBE, ser, m.responseDeserialize, req, new Metadata(), {});
        this.call.on('data', (ev) => this.onEvent(ev));
        this.call.on('error', (e) => {
            this.error = e;
        });
        this.call.on('status', (s) => {
            this.status = s;
            this.ended = true;
        });
    }

    problem(msg) {
        this.problems.push(msg);
    }

    onEvent(ev) {
        ev.at = performance.now();
        this.events.push(ev);
        if (this.events.length === 1 && ev.event !== 'hello') this.problem(`first event is ${ev.event}`);
        if (ev.event === 'hello') {
            if (this.events.length !== 1) this.problem('Hello not first');
            this.hello = ev.hello;
        } else if (ev.event === 'heartbeat') {
            if (this.cur) this.problem('heartbeat inside a transaction or snapshot');
            this.heartbeats.push({ at: ev.at, ...ev.heartbeat });
        } else if (ev.event === 'snapshot') {
            this.onSnapshot(ev.snapshot);
        } else if (ev.event === 'txn') {
            this.onTxn(ev.txn);
        }
    }

    checkPages(chunk, what) {
        for (const p of chunk.pages) {
            if (p.data.length !== chunk.page_size) this.problem(`${what}: page ${p.pgno} has ${p.data.length} bytes`);
            if (this.cur.lastPgno !== undefined && p.pgno <= this.cur.lastPgno) this.problem(`${what}: pgno ${p.pgno} after ${this.cur.lastPgno}`);
            this.cur.lastPgno = p.pgno;
            if (this.fd !== undefined) fs.writeSync(this.fd, p.data, 0, p.data.length, (p.pgno - 1) * chunk.page_size);
        }
        if (chunk.pages.length * chunk.page_size > MiB + 65536) this.problem(`${what}: chunk of ${chunk.pages.length} pages`);
        this.cur.chunks++;
        this.cur.npages += chunk.pages.length;
    }

    onSnapshot(s) {
        if (s.first) {
            if (this.cur) this.problem('snapshot starts inside another');
            this.cur = { kind: 'snapshot', txid: s.txid, reason: s.reason, database_id: s.database_id, epoch: s.epoch, chunks: 0, npages: 0 };
            if (this.file) this.fd = fs.openSync(this.file, 'w+');
        } else if (!this.cur || this.cur.kind !== 'snapshot' || this.cur.txid !== s.txid) {
            this.problem(`snapshot chunk for ${s.txid} out of place`);
            return;
        }
        this.checkPages(s, `snapshot ${s.txid}`);
        if (s.last) {
            Object.assign(this.cur, { checksum: s.checksum, db_pages: s.db_pages, page_size: s.page_size, commit_time_us: s.commit_time_us });
            this.snapshots.push(this.cur);
            this.finish(BigInt(s.txid), s.db_pages, s.page_size);
        }
    }

    onTxn(t) {
        if (!this.cur) {
            const want = this.applied === null ? null : this.applied + 1n;
            if (want !== null && BigInt(t.txid) !== want) this.problem(`txn ${t.txid} after ${this.applied}`);
            this.cur = { kind: 'txn', txid: t.txid, chunks: 0, npages: 0 };
        } else if (this.cur.kind !== 'txn' || this.cur.txid !== t.txid) {
            this.problem(`txn chunk ${t.txid} inside ${this.cur.kind} ${this.cur.txid}`);
            return;
        }
        this.checkPages(t, `txn ${t.txid}`);
        if (t.last) {
            if (t.commit_time_us === '0') this.problem(`txn ${t.txid} without commit time`);
            this.txns.set(BigInt(t.txid), { checksum: t.checksum, chunks: this.cur.chunks, npages: this.cur.npages });
            this.finish(BigInt(t.txid), t.db_pages, t.page_size);
        }
    }

    finish(txid, dbPages, pageSize) {
        if (this.fd !== undefined) fs.ftruncateSync(this.fd, dbPages * pageSize);
        this.applied = txid;
        this.cur = null;
    }

    checksumAt(txid) {
        const t = this.txns.get(BigInt(txid));
        if (t) return t.checksum;
        const s = this.snapshots.find((x) => BigInt(x.txid) === BigInt(txid));
        return s ? s.checksum : undefined;
    }

    /** Wait until a complete transaction or snapshot at or past txid arrived. */
    async until(txid, timeoutMs = 20000) {
        await waitFor(
            () => {
                if (this.error) throw Object.assign(new Error(`stream failed: ${this.error.message}`), { fatal: true });
                return this.applied !== null && this.applied >= BigInt(txid);
            },
            { timeoutMs, what: `subscriber at txid ${txid} (now ${this.applied})` },
        );
    }

    close() {
        if (!this.ended) this.call.cancel();
        if (this.fd !== undefined) fs.closeSync(this.fd);
        this.fd = undefined;
    }
}

async function status(client = c) {
    return client.status();
}

async function insertBlob(client, bytes, seed = 1) {
    const b = Buffer.alloc(bytes);
    for (let i = 0; i < bytes; i += 4096) b.writeUInt32LE((i * 2654435761 + seed) >>> 0, i);
    const r = await client.execute({ statements: [stmt('INSERT INTO t (v) VALUES (?)', [b])] });
    if (r.results[0].error) throw new Error(r.results[0].error.message);
    return BigInt(r.txid);
}

// The same summary query on the primary and on a rebuilt file.
const SUMMARY_SQL = "SELECT count(*) || ':' || coalesce(sum(length(v)), 0) || ':' || coalesce(group_concat(id || '-' || hex(substr(v, 1, 8)), ','), '') FROM (SELECT * FROM t ORDER BY id)";

function summaryOfFile(file) {
    const py = [
        'import sqlite3, sys',
        `db = sqlite3.connect('file:' + sys.argv[1] + '?immutable=1', uri=True)`,
        "print(db.execute('PRAGMA integrity_check').fetchone()[0])",
        'print(db.execute(sys.argv[2]).fetchone()[0])',
    ].join('\n');
    const out = run('python3', ['-c', py, file, SUMMARY_SQL]).trim().split('\n');
    return { integrity: out[0], summary: out[1] };
}

function subscribeReq(st, over = {}) {
    return { database_id: st.database_id, epoch: st.epoch, applied_txid: st.head_txid, applied_checksum: st.checksum, ...over };
}

// ---------------------------------------------------------------- tests

itest('a new replica gets Hello, a consistent snapshot, then every commit; the pages rebuild the database', async () => {
    for (let i = 0; i < 12; i++) await insertBlob(c, 200 * 1024, i); // a few MiB: several snapshot chunks
    const before = await status();
    const file = path.join(makeTmpDir(), 'rebuilt.db');
    const cl = rawClient(P.addr);
    const s = new Sub(cl, {}, { file });
    try {
        await s.until(before.head_txid);
        assert.deepEqual(s.problems, []);
        assert.equal(s.hello.database_id, before.database_id);
        assert.equal(s.hello.epoch, before.epoch);
        assert.equal(s.hello.page_size, before.page_size);
        assert.ok(BigInt(s.hello.head_txid) >= BigInt(before.head_txid));
        assert.equal(s.snapshots.length, 1, 'exactly one snapshot');
        const snap = s.snapshots[0];
        assert.equal(snap.reason, 'new replica');
        assert.equal(snap.database_id, before.database_id);
        assert.equal(snap.epoch, before.epoch);
        assert.ok(snap.chunks >= 3, `a ${before.db_pages}-page snapshot in ${snap.chunks} chunks`);
        const lockPage = Math.floor(0x40000000 / snap.page_size) + 1;
        assert.equal(snap.npages, snap.db_pages - (snap.db_pages >= lockPage ? 1 : 0), 'every page once');
        if (snap.txid === before.head_txid) assert.equal(snap.checksum, before.checksum);

        // Later commits follow, each exactly once and in order, a big one in several chunks.
        const big = await insertBlob(c, 3 * MiB, 99);
        let last = big;
        for (let i = 0; i < 5; i++) last = await insertBlob(c, 10000, 100 + i);
        await exec1(c, 'DELETE FROM t WHERE id % 3 = 0');
        await exec1(c, 'VACUUM'); // the database shrinks: db_pages goes down
        const after = await status();
        await s.until(after.head_txid);
        assert.deepEqual(s.problems, []);
        assert.ok(s.txns.get(big).chunks >= 3, `3 MiB transaction in ${s.txns.get(big).chunks} chunks`);
        for (let t = BigInt(snap.txid) + 1n; t <= BigInt(after.head_txid); t++) assert.ok(s.txns.has(t), `txn ${t} arrived`);
        assert.equal(s.checksumAt(after.head_txid), after.checksum, 'checksum at the head');

        const mine = summaryOfFile(file);
        assert.equal(mine.integrity, 'ok');
        assert.equal(mine.summary, scalar(await exec1(c, SUMMARY_SQL)));
        assert.equal(fs.statSync(file).size, after.db_pages * after.page_size);
    } finally {
        s.close();
        cl.close();
    }
});

itest('a replica resuming from a position gets exactly the transactions after it', async () => {
    const cl = rawClient(P.addr);
    const st0 = await status();
    const a = new Sub(cl, subscribeReq(st0));
    try {
        const txids = [];
        for (let i = 0; i < 6; i++) txids.push(await insertBlob(c, 5000, 200 + i));
        await a.until(txids[5]);
        assert.deepEqual(a.problems, []);
        assert.equal(a.snapshots.length, 0, 'caught-up replica needs no snapshot');

        const from = txids[2];
        const b = new Sub(cl, { ...subscribeReq(st0), applied_txid: String(from), applied_checksum: a.checksumAt(from) });
        try {
            await b.until(txids[5]);
            // Heartbeats come once it is caught up, and nothing more in between.
            await waitFor(() => b.heartbeats.length >= 1, { what: 'a heartbeat' });
            assert.deepEqual(b.problems, []);
            assert.equal(b.snapshots.length, 0);
            const got = b.events.filter((e) => e.event === 'txn' && e.txn.last).map((e) => BigInt(e.txn.txid));
            assert.deepEqual(got, txids.slice(3));
            for (const t of txids.slice(3)) assert.equal(b.checksumAt(t), a.checksumAt(t));
        } finally {
            b.close();
        }
    } finally {
        a.close();
        cl.close();
    }
});

itest('a position the log cannot serve gets a snapshot with the reason, then the stream goes on', async () => {
    const cl = rawClient(P.addr);
    const st = await status();
    // The checksum of an older txid, to test a mismatch inside the log.
    const rec = new Sub(cl, subscribeReq(st));
    const older = await insertBlob(c, 3000, 300);
    await insertBlob(c, 3000, 301);
    await rec.until(older + 1n);
    rec.close();
    const head = await status();
    const cases = [
        ['database id mismatch', { database_id: 'ab'.repeat(16) }],
        ['epoch mismatch', { epoch: String(BigInt(head.epoch) + 1n) }],
        ['ahead of the primary', { applied_txid: String(BigInt(head.head_txid) + 5n) }],
        ['checksum mismatch', { applied_checksum: String(BigInt.asUintN(64, BigInt(head.checksum) ^ 1n)) }],
        ['checksum mismatch', { applied_txid: String(older), applied_checksum: String(BigInt.asUintN(64, BigInt(rec.checksumAt(older)) + 7n)) }],
        ['new replica', { database_id: '', epoch: '0', applied_txid: '0' }],
    ];
    try {
        for (const [reason, over] of cases) {
            const s = new Sub(cl, subscribeReq(head, over));
            try {
                await waitFor(() => s.snapshots.length === 1 || s.error, { timeoutMs: 20000, what: `snapshot (${reason})` });
                assert.equal(s.error, undefined);
                assert.equal(s.snapshots[0].reason, reason, JSON.stringify(over));
                const next = await insertBlob(c, 1000, 400);
                await s.until(next);
                assert.ok(s.txns.has(next), `${reason}: the stream continues after the snapshot`);
                assert.deepEqual(s.problems, []);
            } finally {
                s.close();
            }
        }
    } finally {
        cl.close();
    }
});

itest('malformed requests and unknown databases are refused with clear codes', async () => {
    const cl = rawClient(P.addr);
    try {
        const bad = new Sub(cl, Buffer.from([0x0a, 0xff, 0x01]), { raw: true });
        await waitFor(() => bad.ended, { what: 'refusal of a malformed request' });
        assert.equal(bad.error.code, Code.INVALID_ARGUMENT);
        assert.match(bad.error.details, /malformed SubscribeRequest/);
        const other = new Sub(cl, { database: 'nope' });
        await waitFor(() => other.ended, { what: 'refusal of another database' });
        assert.equal(other.error.code, Code.NOT_FOUND);
        assert.match(other.error.details, /nope/);
        assert.equal(other.events.length, 0);
        // The named database works.
        const st = await status();
        const ok = new Sub(cl, subscribeReq(st, { database: st.database }));
        await waitFor(() => ok.heartbeats.length > 0, { what: 'a heartbeat' });
        ok.close();
    } finally {
        cl.close();
    }
});

itest('heartbeats arrive about every 100 ms while idle, with the head and the clock', async () => {
    const cl = rawClient(P.addr);
    const st = await status();
    const s = new Sub(cl, subscribeReq(st));
    try {
        await waitFor(() => s.heartbeats.length >= 12, { timeoutMs: 10000, what: '12 heartbeats' });
        const hb = s.heartbeats.slice(1);
        const gaps = hb.slice(1).map((h, i) => h.at - hb[i].at).sort((x, y) => x - y);
        const median = gaps[Math.floor(gaps.length / 2)];
        assert.ok(median >= 80 && median <= 160, `median heartbeat gap ${median} ms (${gaps.map(Math.round)})`);
        for (const h of hb) {
            assert.equal(h.head_txid, st.head_txid);
            assert.equal(h.head_time_us, st.head_time_us);
            const skew = Number(BigInt(h.now_us) / 1000n) - Date.now();
            assert.ok(Math.abs(skew) < 60000, `now_us skew ${skew} ms`);
        }
        assert.deepEqual(s.problems, []);
    } finally {
        s.close();
        cl.close();
    }
});

itest('on one connection, a write\'s transaction always arrives before its Execute response', { timeout: 120000 }, async () => {
    // One client object, so one HTTP/2 connection, with the sidecar's window:
    // HTTP/2 flow control can hold back a stream's DATA and never the other
    // stream's response, so the order holds while the subscriber's window is open.
    const cl = rawClient(P.addr, { window: 8 * MiB });
    const st = await status();
    const s = new Sub(cl, subscribeReq(st));
    try {
        await waitFor(() => s.heartbeats.length > 0, { what: 'the subscriber to be live' });
        const late = [];
        const check = (res) => {
            const txid = BigInt(res.txid);
            if (!s.txns.has(txid)) late.push(txid);
        };
        // Sequential writes, then concurrent ones (group commits).
        for (let i = 0; i < 200; i++) check(await rawExecute(cl, 'INSERT INTO t (v) VALUES (?)', [Buffer.alloc(100 + i)]));
        for (let round = 0; round < 25; round++) {
            const rs = await Promise.all(
                Array.from({ length: 16 }, (_, i) => rawExecute(cl, 'INSERT INTO t (v) VALUES (?)', [Buffer.alloc(2000 + i)])),
            );
            rs.forEach(check);
        }
        assert.deepEqual(late, [], `${late.length} Execute responses arrived before their transaction`);
        assert.deepEqual(s.problems, []);
    } finally {
        s.close();
        cl.close();
    }
});

itest('SIGTERM ends subscriptions with UNAVAILABLE and the primary exits cleanly', async () => {
    const Q = await startPrimary();
    const qc = makeClient(Q.addr);
    const cl = rawClient(Q.addr);
    try {
        await exec1(qc, 'CREATE TABLE x (a)');
        const s = new Sub(cl, {});
        await waitFor(() => s.heartbeats.length > 0, { what: 'a live subscriber' });
        const st = await Q.stop();
        assert.equal(st.code, 0, Q.tail());
        await waitFor(() => s.ended, { what: 'the stream to end' });
        assert.equal(s.error.code, Code.UNAVAILABLE);
        assert.match(s.error.details, /shutting down/);
    } finally {
        qc.close();
        cl.close();
    }
});

itest('a replica behind retention gets a snapshot; a subscriber that stops reading does not grow the primary', { timeout: 180000 }, async () => {
    // A small log (1 MiB), so that writing a few MiB prunes it.
    const asan = process.env.ASAN_OPTIONS ? `${process.env.ASAN_OPTIONS}:` : '';
    const Q = await startPrimary({ args: ['--log-retain-mb', '1'], env: { ASAN_OPTIONS: `${asan}quarantine_size_mb=1:detect_leaks=1` } });
    const qc = makeClient(Q.addr);
    const cl = rawClient(Q.addr);
    const logDir = `${Q.db}-boomerang/log`;
    const oldest = () => Math.min(...fs.readdirSync(logDir).filter((n) => n.endsWith('.log')).map((n) => parseInt(n, 16)));
    const rss = () => Number(/VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${Q.pid}/status`, 'utf8'))[1]) * 1024;
    try {
        await exec1(qc, 'CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)');
        const st1 = await qc.status();
        const rec = new Sub(cl, subscribeReq(st1, { applied_txid: '0', applied_checksum: '0', database_id: '' }));
        await rec.until(st1.head_txid);
        const sum1 = rec.checksumAt(st1.head_txid);
        rec.close();

        // A subscriber that never reads past its first few events.
        const slow = new Sub(cl, subscribeReq(st1));
        slow.call.pause();

        await waitFor(async () => {
            await insertBlob(qc, 256 * 1024, Date.now());
            return oldest() > Number(st1.head_txid) + 1;
        }, { timeoutMs: 60000, what: 'the log to be pruned' });
        const s = new Sub(rawClient(Q.addr), subscribeReq(st1, { applied_checksum: sum1 }));
        await waitFor(() => s.snapshots.length === 1 || s.error, { timeoutMs: 20000, what: 'snapshot for a pruned position' });
        assert.equal(s.snapshots[0].reason, 'behind retention');
        s.close();

        // Write a lot more while `slow` reads nothing: memory stays bounded. The
        // primary's own footprint for 1 MiB writes levels off after a few dozen
        // (SQLite's cache, malloc arenas), so measure from there.
        let head = 0n;
        for (let i = 0; i < 48; i++) head = await insertBlob(qc, MiB, i);
        const base = rss();
        for (let i = 0; i < 96; i++) head = await insertBlob(qc, MiB, i);
        const grown = rss() - base;
        assert.ok(grown < 32 * MiB, `RSS grew by ${(grown / MiB).toFixed(1)} MiB while writing 96 MiB to a stalled subscriber`);

        // Once it reads again, it catches up: with a snapshot, as its place was pruned.
        slow.call.resume();
        await withDeadline(slow.until(head, 60000), 65000, 'slow subscriber catch-up');
        assert.deepEqual(slow.problems, []);
        assert.equal(slow.snapshots.length, 1);
        assert.equal(slow.snapshots[0].reason, 'behind retention');
        slow.close();
    } finally {
        qc.close();
        cl.close();
    }
});
