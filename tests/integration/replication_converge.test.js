// Convergence (issue 3): a random workload of at least 10,000 committed
// transactions from concurrent clients, with DDL, indexes, large blobs
// (overflow pages), deletes followed by VACUUM, auto_vacuum FULL and
// INCREMENTAL, rolled-back and failing transactions and WAL restarts after
// checkpoints, followed the whole time by two replicas: one from the start,
// one started halfway (it takes a snapshot while the load runs). At the end
// both replicas have applied the primary's head, hold the same schema and
// rows (every table, in rowid order: the primary read through Execute, the
// replicas through sqlq), the same database checksum as the primary's Status
// (sqlq --checksum, with the replica's schema-cookie delta), and pass
// PRAGMA integrity_check; the same holds at each phase's end (checksums).
// Stopped cleanly, each replica file is exactly the primary's size: the
// shrinking was replicated too (DESIGN.md, replication contract 1, 3, 5).
//
// A "transaction" here is one client transaction that committed: an ATOMIC
// request, an interactive BEGIN..COMMIT, or a VACUUM; each gets a non-zero
// txid in its response. Failed and rolled-back transactions are not counted.
// The test runs twice: with the primary's group commit (several client
// transactions may share one txid, as in production), and with
// --no-group-commit, where each is its own txid, so that the replicas apply at
// least that many transactions one by one.
//
// Environment:
//   BOOMERANG_CONVERGE_TXNS       committed client transactions, in each run (default 10000)
//   BOOMERANG_CONVERGE_CLIENTS    concurrent gRPC clients (default 16)
//   BOOMERANG_CONVERGE_BUDGET_MS  time allowed for the load; the test fails if the
//                                 transactions are not done by then (default 120000, each run)

import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

import {
    exec1,
    haveBinary,
    itest,
    makeClient,
    makeTmpDir,
    okResults,
    replicaCookieDelta,
    replicaStatus,
    rng,
    rowsOf,
    scalar,
    sqlqChecksum,
    sqlqLines,
    sqlqRows,
    startPrimary,
    startReplica,
    stmt,
    testSeed,
    waitReplicaAt,
} from './helpers.js';

const TXNS = Number(process.env.BOOMERANG_CONVERGE_TXNS || 10000);
const CLIENTS = Number(process.env.BOOMERANG_CONVERGE_CLIENTS || 16);
const BUDGET_MS = Number(process.env.BOOMERANG_CONVERGE_BUDGET_MS || 120000);
const KiB = 1024;
const noTools = !process.env.BOOMERANG_BIN && !(haveBinary('boomerang-replica') && haveBinary('sqlq'));

// ---------------------------------------------------------------- schema and workload

const SCHEMA = [
    'CREATE TABLE kv (k INTEGER PRIMARY KEY, v INTEGER NOT NULL, tag TEXT, uk TEXT UNIQUE, pad BLOB, CHECK (v > -1000000000))',
    'CREATE INDEX kv_tag ON kv(tag)',
    'CREATE INDEX kv_v ON kv(v, k)',
    'CREATE TABLE log (id INTEGER PRIMARY KEY AUTOINCREMENT, client INTEGER NOT NULL, n INTEGER NOT NULL, note TEXT, r REAL)',
    'CREATE INDEX log_client ON log(client, n)',
    'CREATE TABLE blobs (id INTEGER PRIMARY KEY, n INTEGER, data BLOB NOT NULL)',
    'CREATE TABLE ballast (id INTEGER PRIMARY KEY, data BLOB)',
    // Row -1 is never deleted (the load deletes k >= 0): its uk makes a UNIQUE violation.
    "INSERT INTO kv (k, v, tag, uk) VALUES (-1, 0, 'sentinel', 'taken')",
];

/** Counters shared by the workers of one run. */
function newStats() {
    return { committed: 0, failed: 0, rolledBack: 0, interactive: 0, blobs: 0, ddl: 0, vacuums: 0, spills: 0, txids: new Set() };
}

function bytes(rand, n) {
    const b = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) b[i] = (rand() * 256) | 0;
    return b;
}

/**
 * One client: picks a random transaction kind, runs it, checks its outcome.
 * Each worker owns its dyn_<ci>_<j> tables, so it knows their shape exactly.
 */
class Worker {
    constructor(ci, addr, seed, stats) {
        this.ci = ci;
        this.c = makeClient(addr);
        this.rand = rng(seed + ci * 7919);
        this.stats = stats;
        this.n = 0;
        this.dyn = new Map(); // name -> { cols: extra column count, index: bool }
        this.nextDyn = 0;
    }

    int(lo, hi) {
        return lo + Math.floor(this.rand() * (hi - lo + 1));
    }

    logStmt(note = 'ok') {
        return stmt('INSERT INTO log (client, n, note, r) VALUES (?, ?, ?, ?)', [BigInt(this.ci), BigInt(this.n), note, this.rand() * 1e6 - 5e5]);
    }

    dmlStmt() {
        const r = this.rand();
        const k = this.int(0, 3999);
        if (r < 0.4) {
            const uk = this.rand() < 0.3 ? `u${this.ci}_${this.n}` : null;
            return stmt('INSERT OR REPLACE INTO kv (k, v, tag, uk, pad) VALUES (?, ?, ?, ?, ?)', [BigInt(k), BigInt(this.n), `t${this.ci}_${k % 13}`, uk, bytes(this.rand, this.int(0, 900))]);
        }
        if (r < 0.65) return stmt('UPDATE kv SET v = v + ?, tag = ? WHERE k BETWEEN ? AND ?', [BigInt(this.int(1, 9)), `u${this.ci}`, BigInt(k), BigInt(k + this.int(0, 20))]);
        if (r < 0.8) return stmt('DELETE FROM kv WHERE k BETWEEN ? AND ?', [BigInt(k), BigInt(k + this.int(0, 8))]);
        if (r < 0.815) return stmt('DELETE FROM log WHERE id IN (SELECT id FROM log WHERE client = ? ORDER BY id LIMIT 10)', [BigInt(this.ci)]);
        if (this.dyn.size > 0) {
            const names = [...this.dyn.keys()];
            const t = names[this.int(0, names.length - 1)];
            if (r < 0.92) return stmt(`INSERT INTO ${t} (a, b) VALUES (?, ?)`, [`a${this.n}`, BigInt(this.n)]);
            if (r < 0.96) return stmt(`UPDATE ${t} SET b = b + 1 WHERE id % 7 = ?`, [BigInt(this.int(0, 6))]);
            return stmt(`DELETE FROM ${t} WHERE id % 11 = ?`, [BigInt(this.int(0, 10))]);
        }
        return this.logStmt();
    }

    async atomic(statements) {
        const res = await this.c.execute({ mode: 'MODE_ATOMIC', statements });
        okResults(res);
        this.committed(res, 'ATOMIC');
        return res;
    }

    committed(res, what) {
        assert.ok(BigInt(res.txid) > 0n, `client ${this.ci}: committed ${what} without a txid: ${JSON.stringify(res)}`);
        this.stats.committed++;
        this.stats.txids.add(res.txid);
    }

    async dml() {
        const statements = [this.logStmt()];
        const n = this.int(1, 7);
        for (let i = 0; i < n; i++) statements.push(this.dmlStmt());
        await this.atomic(statements);
    }

    /** A transaction that must fail as a whole: nothing of it may survive. */
    async failing() {
        const r = this.rand();
        let bad;
        let code;
        if (r < 0.4) {
            bad = stmt("INSERT INTO kv (k, v, uk) VALUES (?, 1, 'taken')", [BigInt(100000 + this.n)]);
            code = /^SQLITE_CONSTRAINT/;
        } else if (r < 0.7) {
            bad = stmt('UPDATE kv SET v = -2000000000 WHERE k = -1');
            code = /^SQLITE_CONSTRAINT/;
        } else if (r < 0.85) {
            bad = stmt('INSERT INTO log (client, n) VALUES (NULL, 0)');
            code = /^SQLITE_CONSTRAINT/;
        } else {
            bad = stmt('INSERT INTO no_such_table VALUES (1)');
            code = /^SQLITE_ERROR/;
        }
        const statements = [this.logStmt('doomed'), this.dmlStmt(), bad, this.logStmt('doomed')];
        const res = await this.c.execute({ mode: 'MODE_ATOMIC', statements });
        const err = res.results[2].error;
        assert.ok(err && code.test(err.code), `client ${this.ci}: the failing statement: ${JSON.stringify(res.results[2])}`);
        for (const i of [0, 1]) assert.ok(!res.results[i].error, `statement ${i} before the failure: ${JSON.stringify(res.results[i])}`);
        assert.equal(res.txid, '0', 'a failed ATOMIC transaction commits nothing');
        this.stats.failed++;
    }

    /** An interactive transaction rolled back; now and then one that spills pages to the WAL. */
    async rolledBack() {
        const big = this.rand() < 0.08;
        const b = await this.c.execute({
            mode: 'MODE_BEGIN',
            statements: [this.logStmt('rolledback'), stmt('UPDATE kv SET v = v + 1000000 WHERE k BETWEEN ? AND ?', [BigInt(this.int(0, 3000)), BigInt(this.int(3000, 3999))])],
        });
        okResults(b);
        assert.equal(b.in_transaction, true);
        const more = big
            ? stmt("INSERT INTO blobs (n, data) SELECT -1, randomblob(256 * 1024) FROM (WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < 16) SELECT x FROM s)")
            : this.dmlStmt();
        okResults(await this.c.execute({ mode: 'MODE_CONTINUE', transaction_id: b.transaction_id, statements: [more, this.logStmt('rolledback')] }));
        const rb = await this.c.execute({ mode: 'MODE_ROLLBACK', transaction_id: b.transaction_id });
        assert.equal(rb.in_transaction, false);
        assert.equal(rb.txid, '0');
        this.stats.rolledBack++;
        if (big) this.stats.spills++;
    }

    async interactive() {
        const b = await this.c.execute({ mode: 'MODE_BEGIN', statements: [this.logStmt('interactive')] });
        okResults(b);
        okResults(await this.c.execute({ mode: 'MODE_CONTINUE', transaction_id: b.transaction_id, statements: [this.dmlStmt(), this.dmlStmt()] }));
        const cm = await this.c.execute({ mode: 'MODE_COMMIT', transaction_id: b.transaction_id, statements: [this.dmlStmt()] });
        okResults(cm);
        assert.equal(cm.in_transaction, false);
        this.committed(cm, 'interactive COMMIT');
        this.stats.interactive++;
    }

    /** A large blob (overflow chains of 25..250 pages), keeping about six of them. */
    async blob() {
        const fromClient = this.rand() < 0.3;
        const size = fromClient ? this.int(100 * KiB, 300 * KiB) : this.int(100 * KiB, 1024 * KiB);
        const ins = fromClient
            ? stmt('INSERT INTO blobs (n, data) VALUES (?, ?)', [BigInt(this.n), crypto.randomBytes(size)])
            : stmt('INSERT INTO blobs (n, data) VALUES (?, randomblob(?))', [BigInt(this.n), BigInt(size)]);
        await this.atomic([ins, stmt('DELETE FROM blobs WHERE id <= (SELECT max(id) FROM blobs) - 6'), this.logStmt('blob')]);
        this.stats.blobs++;
    }

    /** CREATE/DROP TABLE, CREATE/DROP INDEX, ALTER TABLE ADD COLUMN on this worker's own tables. */
    async ddl() {
        const names = [...this.dyn.keys()];
        const statements = [this.logStmt('ddl')];
        if (names.length === 0 || (names.length < 3 && this.rand() < 0.4)) {
            const t = `dyn_${this.ci}_${this.nextDyn++}`;
            statements.push(stmt(`CREATE TABLE ${t} (id INTEGER PRIMARY KEY, a TEXT, b INTEGER)`));
            statements.push(stmt(`WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < ?) INSERT INTO ${t} (a, b) SELECT 'x' || x, x FROM s`, [BigInt(this.int(1, 60))]));
            await this.atomic(statements);
            this.dyn.set(t, { cols: 0, index: false });
        } else {
            const t = names[this.int(0, names.length - 1)];
            const d = this.dyn.get(t);
            const r = this.rand();
            if (r < 0.3) {
                statements.push(stmt(d.index ? `DROP INDEX ${t}_b` : `CREATE INDEX ${t}_b ON ${t}(b, a)`));
                await this.atomic(statements);
                d.index = !d.index;
            } else if (r < 0.65 && d.cols < 6) {
                statements.push(stmt(`ALTER TABLE ${t} ADD COLUMN c${d.cols} TEXT DEFAULT 'dflt${d.cols}'`));
                statements.push(stmt(`UPDATE ${t} SET c${d.cols} = 'set' || id WHERE id % 3 = 0`));
                await this.atomic(statements);
                d.cols++;
            } else {
                statements.push(stmt(`DROP TABLE ${t}`));
                await this.atomic(statements);
                this.dyn.delete(t);
            }
        }
        this.stats.ddl++;
    }

    async vacuum() {
        const res = await this.c.execute({ statements: [stmt('VACUUM')] });
        okResults(res);
        this.committed(res, 'VACUUM');
        this.stats.vacuums++;
    }

    async step() {
        this.n++;
        const r = this.rand();
        if (r < 0.035) return this.failing();
        if (r < 0.06) return this.rolledBack();
        if (r < 0.075) return this.interactive();
        if (r < 0.085) return this.blob();
        if (r < 0.1) return this.ddl();
        if (r < 0.1004) return this.vacuum();
        if (r < 0.1008) return this.atomic([stmt('ANALYZE'), this.logStmt('analyze')]);
        return this.dml();
    }

    close() {
        this.c.close();
    }
}

/** Run the workers until `target` transactions have committed in all (or the deadline passes). */
async function load(workers, stats, target, deadline) {
    await Promise.all(
        workers.map(async (w) => {
            while (stats.committed < target) {
                if (Date.now() > deadline) {
                    throw new Error(`load budget of ${BUDGET_MS} ms spent at ${stats.committed} of ${target} transactions (set BOOMERANG_CONVERGE_BUDGET_MS)`);
                }
                await w.step();
            }
        }),
    );
}

// ---------------------------------------------------------------- comparisons

/** The checkpoint sequence number in the WAL header (offset 12): it grows at each WAL restart. */
function walCheckpointSeq(db) {
    let fd;
    try {
        fd = fs.openSync(`${db}-wal`, 'r');
    } catch (e) {
        if (e.code === 'ENOENT') return null;
        throw e;
    }
    try {
        const hdr = Buffer.alloc(32);
        return fs.readSync(fd, hdr, 0, 32, 0) === 32 ? hdr.readUInt32BE(12) : null;
    } finally {
        fs.closeSync(fd);
    }
}

const SCHEMA_SQL = "SELECT quote(type) || ',' || quote(name) || ',' || quote(tbl_name) || ',' || quote(rootpage) || ',' || quote(sql) FROM sqlite_schema ORDER BY type, name";
const TABLES_SQL = "SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name";

/** One text column per row: every value quote()d, so both sides print them identically. */
function rowExpr(cols) {
    return ['quote(rowid)', ...cols.map((c) => `quote("${c}")`)].join(" || ',' || ");
}

/** The primary's logical content through Execute: { schema: [lines], tables: { name: [lines] } }. */
async function primaryDump(c) {
    const schema = rowsOf(await exec1(c, SCHEMA_SQL)).map((r) => r[0]);
    const tables = {};
    for (const [t] of rowsOf(await exec1(c, TABLES_SQL))) {
        const cols = rowsOf(await exec1(c, 'SELECT name FROM pragma_table_info(?) ORDER BY cid', [t])).map((r) => r[0]);
        const expr = rowExpr(cols);
        // Page by rowid so that no response nears the 16 MiB message limit.
        const sizes = rowsOf(await exec1(c, `SELECT rowid, length(${expr}) FROM "${t}" ORDER BY rowid`));
        const lines = [];
        for (let i = 0; i < sizes.length; ) {
            let bytesIn = 0;
            let j = i;
            while (j < sizes.length && (j === i || bytesIn + Number(sizes[j][1]) < 4 * 1024 * 1024)) bytesIn += Number(sizes[j++][1]);
            const rows = rowsOf(await exec1(c, `SELECT ${expr} FROM "${t}" WHERE rowid BETWEEN ? AND ? ORDER BY rowid`, [sizes[i][0], sizes[j - 1][0]]));
            lines.push(...rows.map((r) => r[0]));
            i = j;
        }
        tables[t] = { cols, lines };
    }
    return { schema, tables };
}

/** A replica file's content, read through sqlq, in the same form (columns as the primary has them). */
function replicaDump(file, primary) {
    const schema = sqlqRows(file, SCHEMA_SQL).map((r) => r[0]);
    const tables = {};
    for (const [t] of sqlqRows(file, TABLES_SQL)) {
        const cols = primary.tables[t] ? primary.tables[t].cols : sqlqRows(file, `SELECT name FROM pragma_table_info('${t}') ORDER BY cid`).map((r) => r[0]);
        tables[t] = { cols, lines: sqlqLines(file, `SELECT ${rowExpr(cols)} FROM "${t}" ORDER BY rowid`).map((l) => JSON.parse(l)[0]) };
    }
    return { schema, tables };
}

function clip(s) {
    return s === undefined ? '(none)' : s.length > 300 ? `${s.slice(0, 300)}... (${s.length} chars)` : s;
}

/** Assert two line lists are equal, reporting the first difference compactly. */
function sameLines(a, b, what) {
    if (a.length === b.length && a.every((l, i) => l === b[i])) return;
    const i = a.findIndex((l, k) => l !== b[k]);
    const at = i < 0 ? Math.min(a.length, b.length) : i;
    assert.fail(`${what}: ${a.length} vs ${b.length} lines; first difference at line ${at}:\n  primary: ${clip(a[at])}\n  replica: ${clip(b[at])}`);
}

function sameDump(p, r, what) {
    sameLines(p.schema, r.schema, `${what}: sqlite_schema`);
    assert.deepEqual(Object.keys(r.tables), Object.keys(p.tables), `${what}: tables`);
    for (const t of Object.keys(p.tables)) sameLines(p.tables[t].lines, r.tables[t].lines, `${what}: table ${t}`);
}

/** The replica file's checksum (its cookie delta undone) equals the primary's at st, and so do its own numbers. */
async function sameChecksum(R, st, what) {
    const s = await replicaStatus(R);
    assert.equal(String(s.applied_txid), String(st.head_txid), `${what}: applied txid`);
    assert.equal(s.checksum, st.checksum, `${what}: the replica's own checksum vs the primary's Status`);
    const sum = sqlqChecksum(R.replica, replicaCookieDelta(R.replica, s));
    assert.equal(sum.checksum, st.checksum, `${what}: sqlq --checksum of the replica file vs the primary's Status at txid ${st.head_txid}`);
    assert.equal(sum.db_pages, st.db_pages, `${what}: pages`);
    return s;
}

/** With writes stopped: every replica reaches the head and has the primary's checksum. */
async function quiesced(c, replicas, what) {
    const st = await c.status();
    for (const R of replicas) {
        await waitReplicaAt(R, c, { st, timeoutMs: 60000, what: `${what}: ${R.label}` });
        await sameChecksum(R, st, `${what}: ${R.label}`);
    }
    return st;
}

// ---------------------------------------------------------------- shrinking

async function pages(c) {
    return Number((await c.status()).db_pages);
}

async function freelist(c) {
    return Number(scalar(await exec1(c, 'PRAGMA freelist_count')));
}

/** Fill the ballast table with 6 MiB (some 1500 pages), then delete it. Returns page counts. */
async function ballastCycle(c) {
    const before = await pages(c);
    const usedBefore = before - (await freelist(c));
    for (let i = 0; i < 6; i++) await exec1(c, 'INSERT INTO ballast (data) VALUES (randomblob(1024 * 1024))');
    const full = await pages(c);
    const used = full - (await freelist(c));
    // It may reuse free pages (INCREMENTAL keeps them), so count pages in use.
    assert.ok(used > usedBefore + 1200, `ballast fills the database: ${usedBefore} -> ${used} pages in use`);
    await exec1(c, 'DELETE FROM ballast');
    return { before, full, after: await pages(c) };
}

/** Set auto_vacuum (NONE 0, FULL 1, INCREMENTAL 2) and VACUUM so that it takes effect. */
async function setAutoVacuum(c, mode) {
    await exec1(c, `PRAGMA auto_vacuum = ${mode}`);
    okResults(await c.execute({ statements: [stmt('VACUUM')] }));
    assert.equal(scalar(await exec1(c, 'PRAGMA auto_vacuum')), BigInt(mode), `auto_vacuum is ${mode} after VACUUM`);
}

// ---------------------------------------------------------------- the test

/**
 * The whole run against one primary. groupCommit false starts it with
 * --no-group-commit: then every client transaction is its own txid, and the
 * replicas apply at least TXNS transactions one by one.
 */
async function converge(t, { groupCommit }) {
    const seed = testSeed();
    t.diagnostic(`seed ${seed} (rerun with BOOMERANG_SEED=${seed})`);
    const dir = makeTmpDir('boomerang-converge-');
    const P = await startPrimary({ dir, args: groupCommit ? [] : ['--no-group-commit'] });
    const c = makeClient(P.addr);
    const stats = newStats();
    const workers = Array.from({ length: CLIENTS }, (_, ci) => new Worker(ci, P.addr, seed, stats));
    const deadline = Date.now() + BUDGET_MS;
    const started = Date.now();
    try {
        // Replica 1 follows from before the first write.
        const R1 = await startReplica(P, path.join(dir, 'r1.db'));
        R1.label = 'replica 1';
        const replicas = [R1];

        // A fresh database: auto_vacuum=FULL before any table exists (and a
        // VACUUM, so it holds whatever the primary wrote first), then the schema.
        await setAutoVacuum(c, 1);
        for (const sql of SCHEMA) await exec1(c, sql);
        const seq0 = walCheckpointSeq(P.db);

        // Phase 1, auto_vacuum=FULL: half the load. A delete shrinks the file at once.
        await load(workers, stats, Math.floor(TXNS / 2), deadline);
        let cyc = await ballastCycle(c);
        assert.ok(cyc.after < cyc.full - 1200, `auto_vacuum=FULL: DELETE shrinks the database (${cyc.full} -> ${cyc.after} pages)`);
        t.diagnostic(`FULL: ${cyc.before} -> ${cyc.full} -> ${cyc.after} pages`);
        await quiesced(c, replicas, 'after phase 1 (auto_vacuum=FULL)');
        const seq1 = walCheckpointSeq(P.db);
        assert.ok(seq0 !== null && seq1 > seq0, `the primary checkpointed and restarted its WAL during phase 1 (WAL checkpoint sequence ${seq0} -> ${seq1})`);

        // Phase 2, auto_vacuum=INCREMENTAL: replica 2 starts now (a snapshot,
        // taken while the load runs), and the next quarter of the load.
        await setAutoVacuum(c, 2);
        const R2 = await startReplica(P, path.join(dir, 'r2.db'));
        R2.label = 'replica 2';
        replicas.push(R2);
        await load(workers, stats, Math.floor((TXNS * 3) / 4), deadline);
        cyc = await ballastCycle(c);
        const free = await freelist(c);
        assert.ok(cyc.after > cyc.full - 50 && free > 1200, `auto_vacuum=INCREMENTAL: DELETE leaves free pages (${cyc.full} -> ${cyc.after} pages, ${free} free)`);
        await exec1(c, 'PRAGMA incremental_vacuum');
        const incr = await pages(c);
        assert.ok(incr < cyc.after - 1200 && (await freelist(c)) === 0, `PRAGMA incremental_vacuum shrinks the database (${cyc.after} -> ${incr} pages)`);
        t.diagnostic(`INCREMENTAL: ${cyc.before} -> ${cyc.full} -> ${cyc.after} -> ${incr} pages`);
        await quiesced(c, replicas, 'after phase 2 (auto_vacuum=INCREMENTAL)');

        // Phase 3, auto_vacuum=NONE: the rest of the load, then deletes and a VACUUM.
        await setAutoVacuum(c, 0);
        await load(workers, stats, TXNS, deadline);
        const loadMs = Date.now() - started;
        cyc = await ballastCycle(c);
        assert.ok(cyc.after > cyc.full - 50, `auto_vacuum=NONE: DELETE keeps the pages (${cyc.full} -> ${cyc.after})`);
        await exec1(c, 'DELETE FROM kv WHERE k % 3 = 0');
        await exec1(c, 'DELETE FROM blobs WHERE id < (SELECT max(id) FROM blobs)');
        const beforeVacuum = await pages(c);
        okResults(await c.execute({ statements: [stmt('VACUUM')] }));
        const afterVacuum = await pages(c);
        assert.ok(afterVacuum < beforeVacuum - 1200, `VACUUM shrinks the database (${beforeVacuum} -> ${afterVacuum} pages)`);
        t.diagnostic(`NONE: ${cyc.full} -> ${cyc.after}; VACUUM ${beforeVacuum} -> ${afterVacuum} pages`);
        const seq2 = walCheckpointSeq(P.db);
        assert.ok(seq2 > seq1, `the WAL restarted again after phase 1 (checkpoint sequence ${seq1} -> ${seq2})`);

        t.diagnostic(
            `${stats.committed} committed transactions in ${loadMs} ms (${stats.txids.size} distinct txids), ${stats.failed} failed, ${stats.rolledBack} rolled back (${stats.spills} large), ` +
                `${stats.interactive} interactive, ${stats.blobs} large blobs, ${stats.ddl} DDL, ${stats.vacuums} VACUUMs during the load; WAL restarts ${seq0} -> ${seq2}`,
        );
        assert.ok(stats.committed >= TXNS);
        if (!groupCommit) assert.equal(stats.txids.size, stats.committed, 'without group commit, one txid per transaction');
        assert.ok(stats.failed > 0 && stats.rolledBack > 0 && stats.ddl > 0 && stats.blobs > 0, 'every kind of transaction ran');

        // The end: both replicas at the head, identical to the primary.
        const st = await quiesced(c, replicas, 'at the end');
        const pd = await primaryDump(c);
        assert.equal(scalar(await exec1(c, 'PRAGMA integrity_check')), 'ok', 'the primary is sound');
        assert.equal(scalar(await exec1(c, "SELECT count(*) FROM log WHERE note IN ('doomed', 'rolledback')")), 0n, 'no trace of failed or rolled-back transactions on the primary');
        assert.equal(scalar(await exec1(c, 'SELECT count(*) FROM blobs WHERE n = -1')), 0n, 'no trace of the rolled-back transactions that spilled');
        const counts = Object.entries(pd.tables).map(([name, tb]) => `${name} ${tb.lines.length}`).join(', ');
        t.diagnostic(`rows: ${counts}`);
        assert.ok(pd.tables.log.lines.length > 100 && pd.tables.kv.lines.length > 100, `the dump has rows: ${counts}`);
        for (const R of replicas) {
            assert.deepEqual(sqlqRows(R.replica, 'PRAGMA integrity_check'), [['ok']], `${R.label}: integrity_check`);
            assert.deepEqual(sqlqRows(R.replica, 'PRAGMA journal_mode'), [['wal']], `${R.label}: WAL mode`);
            sameDump(pd, replicaDump(R.replica, pd), R.label);
            const s = await sameChecksum(R, st, `${R.label} at the end`);
            assert.equal(s.checksum_mismatches, 0, `${R.label}: checksum mismatches`);
            assert.equal(s.apply_errors, 0, `${R.label}: apply errors`);
            assert.equal(s.protocol_errors, 0, `${R.label}: protocol errors`);
            assert.equal(s.lag_txids, 0, `${R.label}: lag`);
            t.diagnostic(`${R.label}: ${s.txns} transactions and ${s.snapshots} snapshot(s) applied, ${s.reconnects} reconnects`);
        }
        assert.ok((await replicaStatus(R1)).snapshots <= 1, 'replica 1 took no snapshot beyond its first');
        assert.equal((await replicaStatus(R2)).snapshots, 1, 'replica 2 took one snapshot');
        assert.match(R2.stderr(), /snapshot begins/);

        // A clean stop checkpoints the replica's WAL into its file: the file then
        // has exactly the primary's pages, so it shrank with the primary's VACUUMs
        // (PRAGMA page_count alone trusts page 1's header and would not tell).
        for (const R of replicas) {
            assert.equal((await R.stop()).code, 0, `${R.label}: exit 0 on SIGTERM`);
            assert.equal(fs.statSync(R.replica).size, st.db_pages * st.page_size, `${R.label}: file size after a clean stop (${st.db_pages} pages)`);
            assert.deepEqual(sqlqRows(R.replica, 'PRAGMA integrity_check'), [['ok']], `${R.label}: integrity_check after the stop`);
        }
    } finally {
        for (const w of workers) w.close();
        c.close();
    }
}

const opts = { timeout: BUDGET_MS + 150000, skip: noTools ? 'no boomerang-replica or sqlq' : false };

itest(`two replicas converge through ${TXNS} transactions from ${CLIENTS} clients (group commit)`, opts, (t) => converge(t, { groupCommit: true }));

itest(`two replicas converge through ${TXNS} transactions from ${CLIENTS} clients, each its own txid (--no-group-commit)`, opts, (t) => converge(t, { groupCommit: false }));
