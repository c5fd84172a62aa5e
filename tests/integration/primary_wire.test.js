// The stock Python gRPC client (Debian's python3-grpcio) against
// boomerang-primary: stubs generated at test time from proto/boomerang.proto.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after } from 'node:test';

import { PROTO, REPO, itest, makeTmpDir, run, spawnTracked, startPrimary, stopAll, waitFor } from './helpers.js';

// Debian installs grpcio and grpc_tools for the system interpreter, which may
// not be the first python3 on PATH.
const PY = '/usr/bin/python3';

after(() => stopAll(), { timeout: 30000 });

itest('the stock Python grpcio client speaks to the primary', { timeout: 60000 }, async () => {
    const stubs = makeTmpDir('boomerang-pystubs-');
    run(PY, ['-m', 'grpc_tools.protoc', '-I', 'proto', `--python_out=${stubs}`, `--grpc_python_out=${stubs}`, path.relative(REPO, PROTO)], {
        cwd: REPO,
    });
    assert.ok(fs.existsSync(path.join(stubs, 'boomerang_pb2_grpc.py')), 'stubs generated');

    const P = await startPrimary();
    const py = spawnTracked(PY, [path.join(REPO, 'tests', 'integration', 'py', 'wire_client.py'), P.addr], {
        env: { ...process.env, PYTHONPATH: stubs, PYTHONDONTWRITEBYTECODE: '1' },
    });
    const st = await waitFor(() => py.exitStatus, { timeoutMs: 30000, what: 'wire_client.py to finish' }).catch(async (e) => {
        await py.kill9();
        throw e;
    });
    assert.equal(st.code, 0, `wire_client.py failed:\n${py.stderr()}`);
    const out = JSON.parse(py.stdout());

    assert.match(out.status.database_id, /^[0-9a-f]{32}$/);
    assert.equal(out.status.head_txid, '0');
    assert.ok(out.status.page_size >= 512);

    assert.deepEqual(out.write.results.map((r) => r.error ?? null), [null, null, null]);
    assert.equal(out.write.txid, '1', 'the first commit is txid 1');
    assert.equal(out.write.results[1].affected_row_count, '1');
    assert.equal(out.write.results[2].last_insert_rowid, '2');
    assert.equal(out.write.results[2].has_last_insert_rowid, true);

    const read = out.read.results[0];
    assert.equal(read.error, undefined);
    assert.equal(out.read.txid, '0');
    assert.equal(out.read.head_txid, '1');
    assert.deepEqual(
        read.columns,
        [['i', 'INTEGER'], ['r', 'REAL'], ['t', 'TEXT'], ['b', 'BLOB'], ['e', 'BLOB'], ['n', ''], ['typeof(e)', '']],
    );
    const all256 = Buffer.from(Array.from({ length: 256 }, (_, i) => i)).toString('hex');
    assert.deepEqual(read.rows, [
        [
            { type: 'integer', value: '-9223372036854775808' },
            { type: 'real', value: '-1.25e-07' },
            { type: 'text', value: 'grüße 🐍' },
            { type: 'blob', value: all256 },
            { type: 'blob', value: '' },
            { type: 'null' },
            { type: 'text', value: 'blob' },
        ],
        [
            { type: 'integer', value: '9223372036854775807' },
            { type: 'real', value: '2.0' },
            { type: 'text', value: '' },
            { type: 'blob', value: '00' },
            { type: 'null' },
            { type: 'integer', value: '0' },
            { type: 'text', value: 'null' },
        ],
    ]);

    const err = out.error.results[0].error;
    assert.equal(err.code, 'SQLITE_CONSTRAINT_PRIMARYKEY');
    assert.equal(err.extended_code, 1555);
    assert.equal(out.error.txid, '0');
    assert.equal(out.not_found, 'NOT_FOUND');
});
