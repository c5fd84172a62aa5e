// What the primary refuses and protects: the authorizer (DESIGN.md contract 6),
// TLS and client certificates, bearer tokens, the message size limit, and a
// clean SIGTERM.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after } from 'node:test';

import {
    Code,
    codeName,
    exec1,
    expectCode,
    grpc,
    itest,
    makeClient,
    makeTmpDir,
    okResults,
    rowsOf,
    run,
    scalar,
    startPrimary,
    stmt,
    stopAll,
    waitFor,
} from './helpers.js';

after(() => stopAll(), { timeout: 30000 });

// ---------------------------------------------------------------- authorizer

itest('the authorizer refuses what would break replication, with SQLITE_AUTH naming the operation', async () => {
    const P = await startPrimary();
    const c = makeClient(P.addr);
    const dir = path.dirname(P.db);
    const copy = path.join(dir, 'copy.db');
    try {
        await exec1(c, 'CREATE TABLE keep (x)');
        await exec1(c, "INSERT INTO keep VALUES ('still here')");
        const headBefore = (await c.status()).head_txid;
        const refused = [
            ["ATTACH DATABASE ':memory:' AS other", /ATTACH/i],
            [`ATTACH '${path.join(dir, 'side.db')}' AS side`, /ATTACH/i],
            ['DETACH DATABASE other', /DETACH/i],
            [`VACUUM INTO '${copy}'`, /VACUUM/i],
            ["SELECT load_extension('/nonexistent/libnothing')", /load_extension/i],
            ['PRAGMA journal_mode = DELETE', /journal_mode/i],
            ['PRAGMA main.journal_mode = MEMORY', /journal_mode/i],
            ['PRAGMA journal_mode = OFF', /journal_mode/i],
            ['PRAGMA wal_checkpoint', /wal_checkpoint/i],
            ['PRAGMA wal_checkpoint(TRUNCATE)', /wal_checkpoint/i],
            ['PRAGMA wal_autocheckpoint = 0', /wal_autocheckpoint/i],
            ['PRAGMA page_size = 8192', /page_size/i],
            ['PRAGMA writable_schema = ON', /writable_schema/i],
            ['PRAGMA synchronous = OFF', /synchronous/i],
            ['PRAGMA main.synchronous = 0', /synchronous/i],
            // Transactions are controlled by the request modes.
            ['BEGIN', /BEGIN|transaction/i],
            ['BEGIN IMMEDIATE', /BEGIN|transaction/i],
            ['COMMIT', /COMMIT|transaction/i],
            ['END', /COMMIT|END|transaction/i],
            ['ROLLBACK', /ROLLBACK|transaction/i],
        ];
        const wrong = [];
        for (const [sql, name] of refused) {
            for (const mode of ['MODE_AUTOCOMMIT', 'MODE_ATOMIC']) {
                const res = await c.execute({ mode, statements: [sql] });
                const e = res.results[0]?.error;
                if (!e) wrong.push(`${mode} ${sql}: not refused`);
                else if (e.code !== 'SQLITE_AUTH') wrong.push(`${mode} ${sql}: ${e.code} ${e.message}`);
                else if (!name.test(e.message)) wrong.push(`${mode} ${sql}: message does not name it: ${e.message}`);
                else if (e.extended_code !== 23) wrong.push(`${mode} ${sql}: extended_code ${e.extended_code}, want 23`);
            }
        }
        // Also inside an interactive transaction.
        const b = await c.execute({ mode: 'MODE_BEGIN', statements: ['SELECT 1'] });
        okResults(b);
        for (const [sql, name] of [["ATTACH ':memory:' AS x", /ATTACH/i], ['PRAGMA journal_mode = DELETE', /journal_mode/i]]) {
            const res = await c.execute({ mode: 'MODE_CONTINUE', transaction_id: b.transaction_id, statements: [sql] });
            const e = res.results[0]?.error;
            if (!e || e.code !== 'SQLITE_AUTH' || !name.test(e.message)) {
                wrong.push(`interactive ${sql}: ${e ? `${e.code} ${e.message}` : 'not refused'}`);
            }
        }
        await c.execute({ mode: 'MODE_ROLLBACK', transaction_id: b.transaction_id }).catch(() => {});
        assert.deepEqual(wrong, []);
        assert.equal(fs.existsSync(copy), false, 'VACUUM INTO wrote a file');
        assert.equal((await c.status()).head_txid, headBefore, 'refused statements commit nothing');

        // Reading settings and a plain VACUUM still work.
        assert.equal(scalar(await exec1(c, 'PRAGMA journal_mode')), 'wal');
        const ps = scalar(await exec1(c, 'PRAGMA page_size'));
        assert.equal(ps, BigInt((await c.status()).page_size));
        const vac = await c.execute({ statements: ['VACUUM'] });
        assert.equal(vac.results[0].error, null, `VACUUM: ${vac.results[0].error?.message}`);
        assert.equal(scalar(await exec1(c, 'PRAGMA journal_mode')), 'wal', 'still WAL after VACUUM');
        assert.equal(scalar(await exec1(c, 'PRAGMA integrity_check')), 'ok');
        assert.deepEqual(rowsOf(await exec1(c, 'SELECT x FROM keep')), [['still here']]);
        // The next write continues the txid sequence.
        const h = BigInt((await c.status()).head_txid);
        const w = await c.execute({ statements: ["INSERT INTO keep VALUES ('after')"] });
        okResults(w);
        assert.equal(BigInt(w.txid), h + 1n);
    } finally {
        c.close();
    }
});

// ---------------------------------------------------------------- TLS

function makePki(dir) {
    const f = (n) => path.join(dir, n);
    const key = (name) => run('openssl', ['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', f(`${name}.key`)]);
    const ca = (name) => {
        key(name);
        run('openssl', [
            'req', '-x509', '-new', '-key', f(`${name}.key`), '-out', f(`${name}.crt`), '-days', '2',
            '-subj', `/CN=${name}`,
            '-addext', 'basicConstraints=critical,CA:TRUE',
            '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
        ]);
    };
    const leaf = (name, caName, ext) => {
        key(name);
        run('openssl', ['req', '-new', '-key', f(`${name}.key`), '-out', f(`${name}.csr`), '-subj', `/CN=${name}`]);
        fs.writeFileSync(f(`${name}.ext`), ext);
        run('openssl', [
            'x509', '-req', '-in', f(`${name}.csr`), '-CA', f(`${caName}.crt`), '-CAkey', f(`${caName}.key`),
            '-CAcreateserial', '-out', f(`${name}.crt`), '-days', '2', '-extfile', f(`${name}.ext`),
        ]);
    };
    ca('test-ca');
    ca('rogue-ca');
    leaf('server', 'test-ca', 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n');
    leaf('client', 'test-ca', 'extendedKeyUsage=clientAuth\n');
    leaf('rogue-client', 'rogue-ca', 'extendedKeyUsage=clientAuth\n');
    const read = (n) => fs.readFileSync(f(n));
    return {
        path: f,
        ca: read('test-ca.crt'),
        client: { key: read('client.key'), cert: read('client.crt') },
        rogue: { key: read('rogue-client.key'), cert: read('rogue-client.crt') },
    };
}

let pkiCache = null;
function pki() {
    if (!pkiCache) pkiCache = makePki(makeTmpDir('boomerang-pki-'));
    return pkiCache;
}

// A call that must not succeed; returns its status code.
async function mustFail(p, what) {
    try {
        await p;
    } catch (e) {
        assert.notEqual(e.code, Code.OK);
        return e.code;
    }
    assert.fail(`${what}: succeeded`);
}

itest('TLS: Status over TLS works, h2c against the TLS port does not', async () => {
    const k = pki();
    const P = await startPrimary({ args: ['--tls-cert', k.path('server.crt'), '--tls-key', k.path('server.key')] });
    const tls = makeClient(P.addr, { creds: grpc.credentials.createSsl(k.ca) });
    const plain = makeClient(P.addr);
    const wrongCa = makeClient(P.addr, { creds: grpc.credentials.createSsl(fs.readFileSync(k.path('rogue-ca.crt'))) });
    try {
        const s = await tls.status();
        assert.match(s.database_id, /^[0-9a-f]{32}$/);
        okResults(await tls.execute({ mode: 'MODE_ATOMIC', statements: ['CREATE TABLE t (x)', "INSERT INTO t VALUES ('tls')"] }));
        await mustFail(plain.status({}, { deadlineMs: 3000 }), 'h2c Status against the TLS port');
        await mustFail(wrongCa.status({}, { deadlineMs: 3000 }), 'TLS client trusting another CA');
        // The server shrugs those off.
        assert.deepEqual(rowsOf(await exec1(tls, 'SELECT x FROM t')), [['tls']]);
        const again = makeClient(P.addr, { creds: grpc.credentials.createSsl(k.ca) });
        assert.equal((await again.status()).database_id, s.database_id);
        again.close();
    } finally {
        tls.close();
        plain.close();
        wrongCa.close();
    }
});

itest('TLS with --tls-client-ca: a client certificate is required', async () => {
    const k = pki();
    const P = await startPrimary({
        args: ['--tls-cert', k.path('server.crt'), '--tls-key', k.path('server.key'), '--tls-client-ca', k.path('test-ca.crt')],
    });
    const noCert = makeClient(P.addr, { creds: grpc.credentials.createSsl(k.ca) });
    const rogue = makeClient(P.addr, { creds: grpc.credentials.createSsl(k.ca, k.rogue.key, k.rogue.cert) });
    const good = makeClient(P.addr, { creds: grpc.credentials.createSsl(k.ca, k.client.key, k.client.cert) });
    try {
        await mustFail(noCert.status({}, { deadlineMs: 3000 }), 'TLS client without a certificate');
        await mustFail(rogue.status({}, { deadlineMs: 3000 }), 'client certificate from another CA');
        const s = await good.status();
        assert.match(s.database_id, /^[0-9a-f]{32}$/);
        okResults(await good.execute({ statements: ['SELECT 1'] }));
    } finally {
        noCert.close();
        rogue.close();
        good.close();
    }
});

// ---------------------------------------------------------------- tokens

itest('--auth-token-file: calls need "authorization: Bearer <token>"', async () => {
    const dir = makeTmpDir();
    const tokFile = path.join(dir, 'token');
    const token = 'sEcReT-token-4f1c9a7e';
    fs.writeFileSync(tokFile, `${token}\n`, { mode: 0o600 }); // as `echo TOKEN > file` writes it
    const P = await startPrimary({ dir, args: ['--auth-token-file', tokFile] });
    const none = makeClient(P.addr);
    const wrong = makeClient(P.addr, { token: 'not-the-token' });
    const prefix = makeClient(P.addr, { token: token.slice(0, -1) });
    const longer = makeClient(P.addr, { token: `${token}x` });
    const right = makeClient(P.addr, { token });
    try {
        for (const [cl, what] of [
            [none, 'no token'],
            [wrong, 'wrong token'],
            [prefix, 'a prefix of the token'],
            [longer, 'the token plus a byte'],
        ]) {
            await expectCode(cl.status(), Code.UNAUTHENTICATED, `Status with ${what}`);
            await expectCode(cl.execute({ statements: ['CREATE TABLE nope (x)'] }), Code.UNAUTHENTICATED, `Execute with ${what}`);
        }
        await expectCode(
            none.status({}, { metadata: { authorization: token } }),
            Code.UNAUTHENTICATED,
            'the token without "Bearer "',
        );
        assert.match((await right.status()).database_id, /^[0-9a-f]{32}$/);
        const w = await right.execute({ statements: ['CREATE TABLE yes (x)'] });
        okResults(w);
        assert.equal(w.txid, '1', 'refused calls wrote nothing');
        assert.equal(P.stderr().includes(token), false, 'the token appears in the log');
    } finally {
        for (const cl of [none, wrong, prefix, longer, right]) cl.close();
    }
});

// ---------------------------------------------------------------- limits

itest('--max-message-mb 1: a 2 MiB request is RESOURCE_EXHAUSTED and the server keeps serving', async () => {
    const P = await startPrimary({ args: ['--max-message-mb', '1'] });
    const c = makeClient(P.addr);
    try {
        await exec1(c, 'CREATE TABLE big (b BLOB)');
        const err = await expectCode(
            c.execute({ statements: [stmt('INSERT INTO big VALUES (?)', [Buffer.alloc(2 * 1024 * 1024, 7)])] }),
            Code.RESOURCE_EXHAUSTED,
            '2 MiB request',
        );
        assert.ok(err.code === Code.RESOURCE_EXHAUSTED, codeName(err.code));
        // Same connection and a new one still work; a message under the limit passes.
        okResults(await c.execute({ statements: [stmt('INSERT INTO big VALUES (?)', [Buffer.alloc(512 * 1024, 9)])] }));
        const other = makeClient(P.addr);
        assert.deepEqual(rowsOf(await exec1(other, 'SELECT length(b) FROM big')), [[524288n]]);
        other.close();
    } finally {
        c.close();
    }
});

// ---------------------------------------------------------------- shutdown

itest('SIGTERM under load drains, exits 0, and the database reopens with every answered write', async () => {
    const dir = makeTmpDir();
    const db = path.join(dir, 'term.db');
    let P = await startPrimary({ db });
    const setup = makeClient(P.addr);
    await exec1(setup, 'CREATE TABLE term (k TEXT PRIMARY KEY, b BLOB)');
    okResults(await setup.execute({ statements: [stmt('INSERT INTO term VALUES (?, ?)', ['big', Buffer.alloc(100000, 3)])] }));
    const before = await setup.status();
    setup.close();

    const answered = [];
    let maxTxid = 0n;
    const clients = Array.from({ length: 8 }, () => makeClient(P.addr));
    let stopping = false;
    const load = clients.map(async (cl, ci) => {
        for (let n = 0; !stopping; n++) {
            const k = `c${ci}-${n}`;
            try {
                const res = await cl.execute({ statements: [stmt('INSERT INTO term VALUES (?, NULL)', [k])] }, { deadlineMs: 10000 });
                okResults(res);
                answered.push(k);
                if (BigInt(res.txid) > maxTxid) maxTxid = BigInt(res.txid);
            } catch (e) {
                if (e.code === undefined) throw e; // a statement error, not the shutdown
                return;
            }
        }
    });
    await waitFor(() => answered.length >= 50, { timeoutMs: 15000, what: '50 answered writes before SIGTERM' });
    P.signal('SIGTERM');
    const st = await waitFor(() => P.exitStatus, { timeoutMs: 15000, what: 'exit after SIGTERM' });
    stopping = true;
    await Promise.all(load);
    for (const cl of clients) cl.close();
    assert.equal(st.signal, null, `killed by ${st.signal}`);
    assert.equal(st.code, 0, 'SIGTERM exits 0');

    // The state lives beside the database: DB-boomerang/meta and log segments.
    const state = `${db}-boomerang`;
    assert.ok(fs.existsSync(path.join(state, 'meta')), `${state}/meta missing`);
    assert.ok(fs.readdirSync(path.join(state, 'log')).length > 0, `${state}/log has no segment`);

    P = await startPrimary({ db });
    const c = makeClient(P.addr);
    try {
        const s = await c.status();
        assert.equal(s.database_id, before.database_id);
        assert.ok(BigInt(s.head_txid) >= maxTxid, `head ${s.head_txid} < answered ${maxTxid}`);
        assert.equal(scalar(await exec1(c, 'PRAGMA integrity_check')), 'ok');
        const present = new Set(rowsOf(await exec1(c, 'SELECT k FROM term')).map(([k]) => k));
        const lost = answered.filter((k) => !present.has(k));
        assert.deepEqual(lost, [], 'answered writes lost across SIGTERM');
        assert.equal(scalar(await exec1(c, "SELECT length(b) FROM term WHERE k = 'big'")), 100000n);
        const w = await c.execute({ statements: ["INSERT INTO term VALUES ('after', NULL)"] });
        okResults(w);
        assert.equal(BigInt(w.txid), BigInt(s.head_txid) + 1n);
    } finally {
        c.close();
    }
});

// ---------------------------------------------------------------- configuration

itest('every flag can come from the environment (BOOMERANG_DB, BOOMERANG_LISTEN, BOOMERANG_AUTH_TOKEN_FILE)', async () => {
    const dir = makeTmpDir();
    const tokFile = path.join(dir, 'token');
    fs.writeFileSync(tokFile, 'env-token\n', { mode: 0o600 });
    const P = await startPrimary({ dir, viaEnv: true, env: { BOOMERANG_AUTH_TOKEN_FILE: tokFile, BOOMERANG_MAX_MESSAGE_MB: '1' } });
    const none = makeClient(P.addr);
    const right = makeClient(P.addr, { token: 'env-token' });
    try {
        await expectCode(none.status(), Code.UNAUTHENTICATED, 'Status without the token from BOOMERANG_AUTH_TOKEN_FILE');
        await exec1(right, 'CREATE TABLE e (b BLOB)');
        await expectCode(
            right.execute({ statements: [stmt('INSERT INTO e VALUES (?)', [Buffer.alloc(1536 * 1024)])] }),
            Code.RESOURCE_EXHAUSTED,
            '1.5 MiB request with BOOMERANG_MAX_MESSAGE_MB=1',
        );
        assert.ok(fs.existsSync(P.db), `BOOMERANG_DB did not create ${P.db}`);
    } finally {
        none.close();
        right.close();
    }
});
