// boomerang-primary over gRPC: Status, values, errors, modes, txids and
// interactive transactions, as a grpc-js client sees them.

import assert from 'node:assert/strict';
import { after, before } from 'node:test';

import {
    Code,
    V,
    exec1,
    expectCode,
    itest,
    jsonReplacer,
    makeClient,
    okResults,
    pause,
    rng,
    rowsOf,
    scalar,
    skipNoBinary,
    startPrimary,
    stmt,
    stopAll,
} from './helpers.js';

let P; // the file's primary (default flags)
let c; // its client

before(async () => {
    if (skipNoBinary()) return;
    P = await startPrimary();
    c = makeClient(P.addr);
}, { timeout: 30000 });

after(async () => {
    if (c) c.close();
    await stopAll();
}, { timeout: 30000 });

const TX_GONE = [Code.FAILED_PRECONDITION, Code.NOT_FOUND];

async function head(client = c) {
    return BigInt((await client.status()).head_txid);
}

itest('Status on a fresh database has the documented shape', async () => {
    const s = await c.status();
    assert.match(s.database_id, /^[0-9a-f]{32}$/, `database_id ${s.database_id}`);
    assert.match(s.epoch, /^\d+$/);
    assert.equal(s.head_txid, '0', 'a fresh database has no commits yet');
    assert.ok([512, 1024, 2048, 4096, 8192, 16384, 32768, 65536].includes(s.page_size), `page_size ${s.page_size}`);
    assert.equal(typeof s.db_pages, 'number');
    const nowUs = BigInt(Date.now()) * 1000n;
    const skew = BigInt(s.now_us) - nowUs;
    assert.ok(skew < 60_000_000n && skew > -60_000_000n, `now_us ${s.now_us} far from the clock ${nowUs}`);

    const again = await c.status({ database: s.database });
    assert.equal(again.database_id, s.database_id, 'database_id is stable');
    assert.equal(again.epoch, s.epoch);
});

itest('values of every type round-trip exactly', async () => {
    await exec1(c, 'CREATE TABLE vals (id INTEGER PRIMARY KEY, v)');
    const r = rng(42);
    const big = Buffer.alloc(1024 * 1024);
    for (let i = 0; i < big.length; i++) big[i] = Math.floor(r() * 256);
    const cases = [
        ['int max', V.int('9223372036854775807'), 'integer', 9223372036854775807n],
        ['int min', V.int('-9223372036854775808'), 'integer', -9223372036854775808n],
        ['int zero', V.int(0), 'integer', 0n],
        ['int 2^53+1', V.int('9007199254740993'), 'integer', 9007199254740993n],
        ['int -1', V.int(-1), 'integer', -1n],
        ['real pi', V.real(Math.PI), 'real', Math.PI],
        ['real integral', V.real(3), 'real', 3],
        ['real max', V.real(Number.MAX_VALUE), 'real', Number.MAX_VALUE],
        ['real min subnormal', V.real(5e-324), 'real', 5e-324],
        ['real negative tiny', V.real(-2.5e-300), 'real', -2.5e-300],
        ['text unicode', V.text('héllo wörld — 日本語 🎉 Ω'), 'text', 'héllo wörld — 日本語 🎉 Ω'],
        ['text empty', V.text(''), 'text', ''],
        ['blob empty', V.blob(Buffer.alloc(0)), 'blob', Buffer.alloc(0)],
        ['blob with zeros', V.blob(Buffer.from([0, 1, 0, 255, 0])), 'blob', Buffer.from([0, 1, 0, 255, 0])],
        ['blob 1 MiB', V.blob(big), 'blob', big],
        ['null explicit', V.null(), 'null', null],
        ['null unset oneof', {}, 'null', null],
    ];
    for (const [i, [, value]] of cases.entries()) {
        await exec1(c, 'INSERT INTO vals (id, v) VALUES (?, ?)', [V.int(i + 1), value]);
    }
    const res = await c.execute({ statements: [stmt('SELECT id, v, typeof(v), length(v) FROM vals ORDER BY id')] });
    const rows = rowsOf(okResults(res)[0]);
    assert.equal(rows.length, cases.length);
    for (const [i, [name, , type, want]] of cases.entries()) {
        const [id, got, sqlType] = rows[i];
        assert.equal(id, BigInt(i + 1), name);
        assert.equal(sqlType, type, `${name}: stored as ${sqlType}`);
        const wire = res.results[0].rows[i].values[1];
        if (want === null) {
            assert.ok(!wire.kind || wire.kind === 'null', `${name}: wire kind ${wire.kind}`);
        } else {
            assert.equal(wire.kind, type, `${name}: wire kind`);
        }
        if (Buffer.isBuffer(want)) {
            assert.ok(Buffer.isBuffer(got), `${name}: not a blob`);
            assert.equal(got.length, want.length, `${name}: blob length`);
            assert.ok(got.equals(want), `${name}: blob bytes differ`);
        } else {
            assert.equal(got, want, name);
        }
    }

    // Values computed by SQL, not just stored ones, come back typed.
    const calc = rowsOf((await exec1(c, "SELECT 1 << 62, 1.5 * 2, 'a' || 'ß', x'00ff', NULL, zeroblob(0)")))[0];
    assert.deepEqual(calc, [4611686018427387904n, 3, 'aß', Buffer.from([0, 255]), null, Buffer.alloc(0)]);
});

itest('named arguments bind with :, @ and $ prefixes and without one', async () => {
    await exec1(c, 'CREATE TABLE named (a, b, c)');
    let res = await c.execute({
        statements: [stmt('INSERT INTO named VALUES (:a, @b, $c)', [], { ':a': 1n, '@b': 'two', $c: 3.5 })],
    });
    okResults(res);
    res = await c.execute({
        statements: [stmt('INSERT INTO named VALUES (:a, @b, $c)', [], { a: 10n, b: 'twenty', c: 30.5 })],
    });
    okResults(res);
    // Positional and numbered parameters.
    okResults(await c.execute({ statements: [stmt('INSERT INTO named VALUES (?3, ?1, ?2)', ['x', 2.25, 100n])] }));
    const rows = rowsOf(await exec1(c, 'SELECT a, b, c FROM named ORDER BY rowid'));
    assert.deepEqual(rows, [
        [1n, 'two', 3.5],
        [10n, 'twenty', 30.5],
        [100n, 'x', 2.25],
    ]);
});

itest('columns carry names and declared types', async () => {
    await exec1(c, 'CREATE TABLE decl (id INTEGER PRIMARY KEY, i INTEGER, r REAL, s TEXT, b BLOB, v VARCHAR(20), u)');
    await exec1(c, "INSERT INTO decl VALUES (1, 2, 3.5, 'four', x'05', 'six', 7)");
    const r = await exec1(c, 'SELECT id, i, r, s, b, v, u, i + 1 AS expr FROM decl');
    assert.deepEqual(
        r.columns.map((col) => [col.name, col.decltype]),
        [
            ['id', 'INTEGER'],
            ['i', 'INTEGER'],
            ['r', 'REAL'],
            ['s', 'TEXT'],
            ['b', 'BLOB'],
            ['v', 'VARCHAR(20)'],
            ['u', ''],
            ['expr', ''],
        ],
    );
    assert.deepEqual(rowsOf(r), [[1n, 2n, 3.5, 'four', Buffer.from([5]), 'six', 7n, 3n]]);
    // A statement with no result set has no columns.
    const w = await exec1(c, 'UPDATE decl SET i = i');
    assert.deepEqual(w.columns, []);
    // skip_rows steps the statement but returns no rows.
    const skip = await c.execute({ statements: [{ sql: 'SELECT id FROM decl', skip_rows: true }] });
    assert.deepEqual(okResults(skip)[0].rows, []);
});

itest('affected_row_count and last_insert_rowid', async () => {
    await exec1(c, 'CREATE TABLE cnt (id INTEGER PRIMARY KEY, x)');
    let r = await exec1(c, 'INSERT INTO cnt (x) VALUES (1), (2), (3)');
    assert.equal(r.affected_row_count, '3');
    assert.equal(r.has_last_insert_rowid, true);
    assert.equal(r.last_insert_rowid, '3');
    r = await exec1(c, 'INSERT INTO cnt (id, x) VALUES (9000000000000, 4)');
    assert.equal(r.affected_row_count, '1');
    assert.equal(r.last_insert_rowid, '9000000000000');
    r = await exec1(c, 'UPDATE cnt SET x = x + 1 WHERE id >= 2');
    assert.equal(r.affected_row_count, '3');
    r = await exec1(c, 'DELETE FROM cnt WHERE id = 1');
    assert.equal(r.affected_row_count, '1');
    r = await exec1(c, 'SELECT * FROM cnt');
    assert.equal(r.affected_row_count, '0', 'a SELECT changes nothing, whatever ran before it');
    assert.equal(r.has_last_insert_rowid, false, 'a SELECT sets no rowid');
    // Several statements in one ATOMIC request each report their own counts.
    const res = await c.execute({
        mode: 'MODE_ATOMIC',
        statements: ['INSERT INTO cnt (id, x) VALUES (50, 0)', 'UPDATE cnt SET x = 0', 'SELECT count(*) FROM cnt'],
    });
    const [a, b, s] = okResults(res);
    assert.equal(a.affected_row_count, '1');
    assert.equal(a.last_insert_rowid, '50');
    assert.equal(b.affected_row_count, '4');
    assert.equal(scalar(s), 4n);
});

itest('ATOMIC: a failing statement rolls back the earlier ones and skips the later ones', async () => {
    await exec1(c, 'CREATE TABLE atom (k TEXT UNIQUE)');
    await exec1(c, "INSERT INTO atom VALUES ('existing')");
    const before = await head();
    const res = await c.execute({
        mode: 'MODE_ATOMIC',
        statements: [
            "INSERT INTO atom VALUES ('a1')",
            "INSERT INTO atom VALUES ('a2')",
            "INSERT INTO atom VALUES ('existing')",
            "INSERT INTO atom VALUES ('a3')",
            "INSERT INTO atom VALUES ('a4')",
        ],
    });
    assert.equal(res.results.length, 5, 'one result per statement');
    assert.equal(res.results[2].error?.code, 'SQLITE_CONSTRAINT_UNIQUE');
    assert.equal(res.results[3].error?.code, 'SKIPPED');
    assert.equal(res.results[4].error?.code, 'SKIPPED');
    assert.equal(res.txid, '0', 'a rolled-back batch commits nothing');
    const rows = rowsOf(await exec1(c, 'SELECT k FROM atom ORDER BY k'));
    assert.deepEqual(rows, [['existing']], 'no statement of the failed batch left a row');
    assert.equal(await head(), before, 'no commit for the failed batch');

    // The same batch without the bad statement commits all of it.
    const ok = await c.execute({
        mode: 'MODE_ATOMIC',
        statements: ["INSERT INTO atom VALUES ('a1')", "INSERT INTO atom VALUES ('a2')"],
    });
    okResults(ok);
    assert.equal(BigInt(ok.txid), before + 1n);
    assert.deepEqual(rowsOf(await exec1(c, 'SELECT k FROM atom ORDER BY k')), [['a1'], ['a2'], ['existing']]);
});

itest('AUTOCOMMIT with several statements commits each on its own', async () => {
    await exec1(c, 'CREATE TABLE indep (k TEXT UNIQUE)');
    const before = await head();
    const res = await c.execute({
        statements: ["INSERT INTO indep VALUES ('x')", "INSERT INTO indep VALUES ('x')", "INSERT INTO indep VALUES ('y')"],
    });
    assert.equal(res.results.length, 3);
    assert.equal(res.results[0].error, null);
    assert.equal(res.results[1].error?.code, 'SQLITE_CONSTRAINT_UNIQUE');
    assert.equal(res.results[2].error, null, 'a failure does not stop later AUTOCOMMIT statements');
    assert.deepEqual(rowsOf(await exec1(c, 'SELECT k FROM indep ORDER BY k')), [['x'], ['y']]);
    // The response carries the last commit, which is the head now.
    assert.ok(BigInt(res.txid) > before, `txid ${res.txid} after ${before}`);
    assert.equal(BigInt(res.txid), await head());
});

itest('txids: +1 per writing call, 0 for reads and failures, head follows', async () => {
    await exec1(c, 'CREATE TABLE tx (id INTEGER PRIMARY KEY, v)');
    let prev = await head();
    const writes = [
        { statements: ['INSERT INTO tx (v) VALUES (1)'] },
        { mode: 'MODE_ATOMIC', statements: ['INSERT INTO tx (v) VALUES (2)', 'INSERT INTO tx (v) VALUES (3)'] },
        { statements: ['UPDATE tx SET v = v * 10'] },
        { statements: ['CREATE INDEX tx_v ON tx (v)'] },
        { statements: ['DROP INDEX tx_v'] },
        { statements: ['DELETE FROM tx WHERE v = 10'] },
    ];
    for (let round = 0; round < 3; round++) {
        for (const w of writes) {
            const res = await c.execute(w);
            okResults(res);
            assert.equal(BigInt(res.txid), prev + 1n, `write ${JSON.stringify(w)}: txid ${res.txid} after ${prev}`);
            assert.equal(BigInt(res.head_txid), prev + 1n, 'head_txid reflects the write');
            prev += 1n;
        }
        const read = await c.execute({ statements: ['SELECT count(*) FROM tx'] });
        okResults(read);
        assert.equal(read.txid, '0', 'a read has txid 0');
        assert.equal(BigInt(read.head_txid), prev, 'a read reports the current head');
        const failed = await c.execute({ statements: ['INSERT INTO tx (id, v) VALUES (1, 0), (1, 0)'] });
        assert.ok(failed.results[0].error, 'duplicate primary key must fail');
        assert.equal(failed.txid, '0', 'a failed write has txid 0');
    }
    assert.equal(await head(), prev, 'Status.head_txid is the last commit');
});

itest('constraint and SQL errors carry SQLite code names', async () => {
    await exec1(
        c,
        'CREATE TABLE cons (id INTEGER PRIMARY KEY, u TEXT UNIQUE, n TEXT NOT NULL, p INTEGER CHECK (p > 0))',
    );
    await exec1(c, "INSERT INTO cons VALUES (1, 'u', 'n', 1)");
    const cases = [
        ["INSERT INTO cons VALUES (2, 'u', 'n', 1)", 'SQLITE_CONSTRAINT_UNIQUE', 2067, /UNIQUE constraint failed: cons\.u/],
        ["INSERT INTO cons VALUES (1, 'v', 'n', 1)", 'SQLITE_CONSTRAINT_PRIMARYKEY', 1555, /UNIQUE constraint failed: cons\.id/],
        ["INSERT INTO cons VALUES (3, 'w', NULL, 1)", 'SQLITE_CONSTRAINT_NOTNULL', 1299, /NOT NULL constraint failed: cons\.n/],
        ["INSERT INTO cons VALUES (4, 'x', 'n', -5)", 'SQLITE_CONSTRAINT_CHECK', 275, /CHECK constraint failed/],
        ['SELEKT 1', 'SQLITE_ERROR', 1, /syntax error/],
        ['SELECT * FROM no_such_table', 'SQLITE_ERROR', 1, /no such table/],
        ["SELECT abs(-9223372036854775807 - 1)", 'SQLITE_ERROR', 1, /integer overflow/],
    ];
    for (const [sql, code, ext, msg] of cases) {
        const res = await c.execute({ statements: [sql] });
        const e = res.results[0].error;
        assert.ok(e, `${sql}: expected an error`);
        assert.equal(e.code, code, `${sql}: ${e.message}`);
        assert.equal(e.extended_code, ext, `${sql}: extended code`);
        assert.match(e.message, msg);
        assert.equal(res.txid, '0');
    }
    // A trigger raising ROLLBACK/ABORT reports the trigger constraint code.
    await exec1(c, "CREATE TRIGGER cons_t BEFORE INSERT ON cons WHEN NEW.p = 666 BEGIN SELECT RAISE(ABORT, 'no 666'); END");
    const res = await c.execute({ statements: ["INSERT INTO cons VALUES (5, 'y', 'n', 666)"] });
    assert.equal(res.results[0].error?.code, 'SQLITE_CONSTRAINT_TRIGGER');
    assert.match(res.results[0].error.message, /no 666/);
    assert.deepEqual(rowsOf(await exec1(c, 'SELECT id FROM cons')), [[1n]]);
});

itest('unknown database name is NOT_FOUND', async () => {
    await expectCode(c.status({ database: 'no-such-database' }), Code.NOT_FOUND, 'Status');
    await expectCode(
        c.execute({ database: 'no-such-database', statements: ['SELECT 1'] }),
        Code.NOT_FOUND,
        'Execute',
    );
    // The empty name still means the only database.
    assert.equal(scalar(await exec1(c, 'SELECT 41 + 1')), 42n);
});

itest('malformed protobuf is INVALID_ARGUMENT and the server keeps serving', async () => {
    const garbage = [
        Buffer.from([0x12, 0x7f, 0x01]), // statements: length 127, 1 byte present
        Buffer.from([0x0f, 0x00]), // field 1, wire type 7 (does not exist)
        Buffer.from([0x12, 0x05, 0x0a, 0x10, 0x41, 0x41, 0x41]), // Statement.sql longer than its Statement
        Buffer.from([0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]), // overlong varint
        Buffer.alloc(16, 0xff), // a tag varint that never ends
    ];
    for (const bytes of garbage) {
        await expectCode(c.rawExecute(bytes), Code.INVALID_ARGUMENT, `garbage ${bytes.toString('hex')}`);
        // Same connection, then a new one: both still work.
        assert.equal(scalar(await exec1(c, 'SELECT 1')), 1n);
    }
    const fresh = makeClient(P.addr);
    try {
        await exec1(fresh, 'CREATE TABLE after_garbage (x)');
        await exec1(fresh, 'INSERT INTO after_garbage VALUES (1)');
        assert.equal(scalar(await exec1(fresh, 'SELECT count(*) FROM after_garbage')), 1n);
    } finally {
        fresh.close();
    }
});

itest('interactive transaction: reads see own writes, others do not, COMMIT publishes', async () => {
    await exec1(c, 'CREATE TABLE itx (k TEXT PRIMARY KEY)');
    const other = makeClient(P.addr);
    try {
        const before = await head();
        const b = await c.execute({ mode: 'MODE_BEGIN', statements: ["INSERT INTO itx VALUES ('in-tx')"] });
        okResults(b);
        assert.notEqual(b.transaction_id, '0', 'BEGIN returns a transaction id');
        assert.equal(b.in_transaction, true);
        assert.equal(b.txid, '0', 'nothing committed yet');
        const id = b.transaction_id;

        const inside = await c.execute({ mode: 'MODE_CONTINUE', transaction_id: id, statements: ['SELECT k FROM itx'] });
        assert.deepEqual(rowsOf(okResults(inside)[0]), [['in-tx']], 'the transaction sees its own write');
        assert.equal(inside.in_transaction, true);
        assert.equal(inside.transaction_id, id);

        // Another client does not see uncommitted data, and is not blocked reading.
        const outside = await other.execute({ statements: ['SELECT count(*) FROM itx'] }, { deadlineMs: 3000 });
        assert.equal(scalar(okResults(outside)[0]), 0n, 'uncommitted row visible to another client');

        // A write from another client waits for (or runs alongside) the transaction, never fails.
        const otherWrite = other.execute({ statements: ["INSERT INTO itx VALUES ('other')"] }, { deadlineMs: 10000 });

        const cm = await c.execute({
            mode: 'MODE_COMMIT',
            transaction_id: id,
            statements: ["INSERT INTO itx VALUES ('at-commit')"],
        });
        okResults(cm);
        assert.equal(cm.in_transaction, false);
        assert.equal(cm.transaction_id, '0');
        const ow = await otherWrite;
        okResults(ow);
        // Two commits (before+1, before+2), or one if both shared a group commit.
        const txids = [...new Set([BigInt(cm.txid), BigInt(ow.txid)])].sort((x, y) => (x < y ? -1 : 1));
        const want = txids.length === 1 ? [before + 1n] : [before + 1n, before + 2n];
        assert.deepEqual(txids, want, `commit ${cm.txid} and other write ${ow.txid} after ${before}`);
        assert.equal(await head(other), txids[txids.length - 1]);
        const rows = rowsOf(await exec1(other, 'SELECT k FROM itx ORDER BY k'));
        assert.deepEqual(rows, [['at-commit'], ['in-tx'], ['other']]);

        // The id is finished.
        await expectCode(
            c.execute({ mode: 'MODE_CONTINUE', transaction_id: id, statements: ['SELECT 1'] }),
            TX_GONE,
            'CONTINUE after COMMIT',
        );
    } finally {
        other.close();
    }
});

itest('interactive transaction: ROLLBACK discards, unknown ids are refused', async () => {
    await exec1(c, 'CREATE TABLE rtx (k TEXT)');
    const before = await head();
    const b = await c.execute({ mode: 'MODE_BEGIN', statements: ["INSERT INTO rtx VALUES ('gone')"] });
    okResults(b);
    const id = b.transaction_id;
    const cont = await c.execute({ mode: 'MODE_CONTINUE', transaction_id: id, statements: ["INSERT INTO rtx VALUES ('gone2')"] });
    okResults(cont);
    const rb = await c.execute({ mode: 'MODE_ROLLBACK', transaction_id: id });
    assert.equal(rb.txid, '0');
    assert.equal(rb.in_transaction, false);
    assert.equal(scalar(await exec1(c, 'SELECT count(*) FROM rtx')), 0n);
    assert.equal(await head(), before, 'a rolled-back transaction is not a commit');
    await expectCode(
        c.execute({ mode: 'MODE_COMMIT', transaction_id: id, statements: [] }),
        TX_GONE,
        'COMMIT after ROLLBACK',
    );
    await expectCode(
        c.execute({ mode: 'MODE_CONTINUE', transaction_id: '987654321987', statements: ['SELECT 1'] }),
        TX_GONE,
        'CONTINUE with an unknown id',
    );
    await expectCode(
        c.execute({ mode: 'MODE_ROLLBACK', transaction_id: '18446744073709551615' }),
        TX_GONE,
        'ROLLBACK with an unknown id',
    );
    // A write after all that gets the next txid.
    const w = await c.execute({ statements: ["INSERT INTO rtx VALUES ('kept')"] });
    okResults(w);
    assert.equal(BigInt(w.txid), before + 1n);
});

itest('interactive transaction: closing the connection rolls it back', async () => {
    await exec1(c, 'CREATE TABLE ctx (k TEXT)');
    const owner = makeClient(P.addr);
    const b = await owner.execute({ mode: 'MODE_BEGIN', statements: ["INSERT INTO ctx VALUES ('orphan')"] });
    okResults(b);
    owner.close();
    // Once the server notices the close, another client's write goes through
    // (it may wait for the rollback; one call with a deadline, never retried,
    // so that it cannot be applied twice) and the orphan's row never appears.
    const w = await c.execute({ statements: ["INSERT INTO ctx VALUES ('after-close')"] }, { deadlineMs: 8000 });
    okResults(w);
    assert.deepEqual(rowsOf(await exec1(c, 'SELECT k FROM ctx')), [['after-close']]);
});

itest('interactive transaction: idle past --tx-timeout-ms is rolled back', { timeout: 60000 }, async () => {
    const Q = await startPrimary({ args: ['--tx-timeout-ms', '300'] });
    const a = makeClient(Q.addr);
    const b = makeClient(Q.addr);
    try {
        await exec1(a, 'CREATE TABLE idle (k TEXT)');
        // A transaction that keeps working past the timeout in total is not idle.
        const busy = await a.execute({ mode: 'MODE_BEGIN', statements: ["INSERT INTO idle VALUES ('busy')"] });
        okResults(busy);
        const start = Date.now();
        while (Date.now() - start < 900) {
            await pause(60); // deliberate delay between CONTINUEs, well under the idle timeout
            okResults(await a.execute({ mode: 'MODE_CONTINUE', transaction_id: busy.transaction_id, statements: ['SELECT 1'] }));
        }
        okResults(await a.execute({ mode: 'MODE_COMMIT', transaction_id: busy.transaction_id }));

        const t0 = Date.now();
        const idle = await a.execute({ mode: 'MODE_BEGIN', statements: ["INSERT INTO idle VALUES ('idle')"] });
        okResults(idle);
        // Another client's write goes through: at once, or once the timeout
        // has rolled the idle transaction back if that one held the writer.
        // One call with a generous deadline, never retried (a retry could
        // apply it twice).
        const w = await b.execute({ statements: ["INSERT INTO idle VALUES ('other')"] }, { deadlineMs: 8000 });
        okResults(w);
        assert.deepEqual(
            rowsOf(await exec1(b, 'SELECT k FROM idle ORDER BY k')),
            [['busy'], ['other']],
            'the idle transaction was rolled back',
        );
        // Stay idle for four timeouts in all, then the id must be gone. Any
        // call on the transaction would reset its idle clock, so this is a
        // deliberate delay rather than a poll.
        await pause(Math.max(0, t0 + 1200 - Date.now())); // idle delay past --tx-timeout-ms
        await expectCode(
            a.execute({ mode: 'MODE_COMMIT', transaction_id: idle.transaction_id }),
            TX_GONE,
            'COMMIT of an expired transaction',
        );
        assert.deepEqual(rowsOf(await exec1(b, "SELECT count(*) FROM idle WHERE k = 'idle'")), [[0n]]);
        // The writer is free again.
        okResults(await a.execute({ statements: ["INSERT INTO idle VALUES ('last')"] }, { deadlineMs: 3000 }));
    } finally {
        a.close();
        b.close();
        const st = await Q.stop();
        assert.equal(st.code, 0, `SIGTERM exit: ${JSON.stringify(st, jsonReplacer)}`);
    }
});
