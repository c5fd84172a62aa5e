// docker/ on a machine with no Docker engine:
//  - the compose file is valid for Debian's docker-compose (`config`), and its
//    environment variables reach the netem services;
//  - the Dockerfile's build stage, run as written (its ARG/ENV and RUN lines, in
//    a clean copy of the tree, with a minimal environment like a container's),
//    builds the five binaries the runtime stage ships, and each answers --help;
//  - the runtime stage installs every shared library those binaries link;
//  - the image's health check script and the netem script behave.
//
// Environment: SQLITE_SRC, else the amalgamation already fetched under
// $BOOMERANG_BIN/../sqlite or <repo>/build*/sqlite (checked against the sha256
// that scripts/fetch-sqlite.sh pins), so the build needs no network; with none,
// the build fetches it from npm as the Dockerfile does. BOOMERANG_KEEP_TMP=1 keeps
// the build directory.

import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const DOCKERFILE = path.join(REPO, 'docker', 'Dockerfile');
const COMPOSE = path.join(REPO, 'docker', 'compose.yaml');
const SHIPPED = ['boomerang-primary', 'boomerang-proxy', 'boomerang-replica', 'boomerang-bench', 'relay'];
const BUILD_BUDGET_MS = 12 * 60 * 1000; // a full build takes ~3 min on 2 cores

const tmpDirs = [];
after(() => {
    if (process.env.BOOMERANG_KEEP_TMP === '1') return;
    for (const d of tmpDirs) fs.rmSync(d, { recursive: true, force: true });
});
function tmpDir(prefix) {
    const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
    tmpDirs.push(d);
    return d;
}

// ---------------------------------------------------------------- Dockerfile

/**
 * The Dockerfile as stages: [{image, name, ins: [{instr, args}]}]. Comment lines
 * go, continuation lines are joined, as Docker's parser does.
 */
function parseDockerfile(text) {
    const logical = [];
    let cur = '';
    for (const raw of text.split('\n')) {
        const t = raw.trim();
        if (t.startsWith('#') || (t === '' && cur === '')) continue;
        if (t.endsWith('\\')) {
            cur += `${t.slice(0, -1)} `;
            continue;
        }
        logical.push(cur + t);
        cur = '';
    }
    const stages = [];
    for (const l of logical) {
        const [, instr, args] = /^(\S+)\s+(.*)$/s.exec(l);
        if (instr.toUpperCase() === 'FROM') {
            const [, image, name] = /^(\S+)(?:\s+AS\s+(\S+))?/i.exec(args);
            stages.push({ image, name, ins: [] });
        } else {
            stages.at(-1).ins.push({ instr: instr.toUpperCase(), args });
        }
    }
    return stages;
}

function stage(stages, name) {
    const s = stages.find((x) => x.name === name);
    assert.ok(s, `the Dockerfile has a stage named ${name}`);
    return s;
}

/** NAME=VALUE (or bare NAME for ARG) of ARG and ENV lines, in order. */
function stageVars(s) {
    const vars = {};
    for (const { instr, args } of s.ins) {
        if (instr !== 'ARG' && instr !== 'ENV') continue;
        const m = /^([A-Za-z_][A-Za-z0-9_]*)(?:=(.*))?$/.exec(args.trim());
        assert.ok(m, `${instr} ${args}: one NAME[=VALUE] per line, as this test reads it`);
        vars[m[1]] = (m[2] ?? '').replace(/^"(.*)"$/, '$1');
    }
    return vars;
}

/** Packages named by the apt-get install commands of a stage's RUN lines. */
function aptPackages(s) {
    const pkgs = new Set();
    for (const { instr, args } of s.ins) {
        if (instr !== 'RUN') continue;
        for (const cmd of args.split(/&&|;/)) {
            const words = cmd.trim().split(/\s+/);
            const i = words.indexOf('install');
            if (!words.includes('apt-get') || i < 0) continue;
            for (const w of words.slice(i + 1)) if (!w.startsWith('-')) pkgs.add(w);
        }
    }
    return pkgs;
}

// ---------------------------------------------------------------- helpers

/** The working tree as Docker's build context holds it: tracked and untracked files, not ignored ones. */
function exportTree(dest) {
    const r = spawnSync('git', ['-C', REPO, 'ls-files', '-z', '--cached', '--others', '--exclude-standard'], {
        encoding: 'buffer',
        maxBuffer: 64 << 20,
    });
    assert.equal(r.status, 0, `git ls-files: ${r.stderr}`);
    const files = r.stdout
        .toString()
        .split('\0')
        .filter((f) => f && fs.existsSync(path.join(REPO, f))); // a tracked file may be deleted mid-edit
    const tar = spawnSync('sh', ['-c', 'tar -C "$1" --null -T - -cf - | tar -C "$2" -xf -', 'sh', REPO, dest], {
        input: files.join('\0'),
        maxBuffer: 1 << 20,
    });
    assert.equal(tar.status, 0, `copying the tree: ${tar.stderr}`);
    return files.length;
}

/** An already-fetched amalgamation that is the pinned one, or null. */
function findPinnedSqlite() {
    const pin = /^c_sha=([0-9a-f]{64})$/m.exec(fs.readFileSync(path.join(REPO, 'scripts', 'fetch-sqlite.sh'), 'utf8'));
    assert.ok(pin, 'scripts/fetch-sqlite.sh pins sqlite3.c with c_sha=');
    const cands = [];
    if (process.env.SQLITE_SRC) cands.push(process.env.SQLITE_SRC);
    if (process.env.BOOMERANG_BIN) cands.push(path.join(process.env.BOOMERANG_BIN, '..', 'sqlite'));
    for (const d of fs.readdirSync(REPO)) if (d === 'build' || d.startsWith('build-')) cands.push(path.join(REPO, d, 'sqlite'));
    for (const c of cands) {
        const dir = path.resolve(c);
        const file = path.join(dir, 'sqlite3.c');
        if (!fs.existsSync(file) || !fs.existsSync(path.join(dir, 'sqlite3.h'))) continue;
        if (crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex') === pin[1]) return dir;
    }
    return null;
}

/** Run a shell command in its own process group; kill the group past the deadline. */
function runShell(cmd, { cwd, env, log, deadline }) {
    return new Promise((resolve) => {
        const out = fs.openSync(log, 'a');
        fs.writeSync(out, `\n$ ${cmd}\n`);
        const p = spawn('/bin/sh', ['-c', cmd], { cwd, env, stdio: ['ignore', out, out], detached: true });
        const timer = setTimeout(() => {
            try {
                process.kill(-p.pid, 'SIGKILL');
            } catch {}
        }, Math.max(0, deadline - Date.now()));
        p.on('exit', (code, signal) => {
            clearTimeout(timer);
            fs.closeSync(out);
            resolve({ code, signal });
        });
    });
}

function tail(file, n = 40) {
    return fs.readFileSync(file, 'utf8').split('\n').slice(-n).join('\n');
}

// ---------------------------------------------------------------- compose

const haveCompose = spawnSync('docker-compose', ['version'], { stdio: 'ignore' }).status === 0;

test('docker-compose accepts docker/compose.yaml', { timeout: 60000, skip: !haveCompose && 'docker-compose is not installed (scripts/deps.sh test installs it)' }, () => {
    const env = { ...process.env };
    for (const k of Object.keys(env)) if (/^(REGION_|BENCH_|SQLITE_SRC$|COMPOSE_)/.test(k)) delete env[k];
    const check = spawnSync('docker-compose', ['-f', COMPOSE, 'config', '-q'], { env, encoding: 'utf8', timeout: 30000 });
    assert.equal(check.status, 0, `docker-compose config -q: ${check.stderr}`);

    // The defaults, and the delays set through the environment.
    const dflt = spawnSync('docker-compose', ['-f', COMPOSE, 'config'], { env, encoding: 'utf8', timeout: 30000 });
    assert.equal(dflt.status, 0, dflt.stderr);
    for (const s of ['primary-wan-a:40', 'primary-wan-b:80', 'a 40 ms, b 80 ms']) assert.ok(dflt.stdout.includes(s), `default ${s}`);
    const set = spawnSync('docker-compose', ['-f', COMPOSE, 'config'], {
        env: { ...env, REGION_A_DELAY_MS: '7', REGION_B_DELAY_MS: '123', BENCH_DURATION_S: '5' },
        encoding: 'utf8',
        timeout: 30000,
    });
    assert.equal(set.status, 0, set.stderr);
    for (const s of ['primary-wan-a:7', 'primary-wan-b:123', "'5'"]) assert.ok(set.stdout.includes(s), `configured ${s}`);
    assert.ok(!set.stdout.includes('primary-wan-a:40'), 'no default delay left once set');

    const services = spawnSync('docker-compose', ['-f', COMPOSE, 'config', '--services'], { env, encoding: 'utf8', timeout: 30000 });
    assert.deepEqual(services.stdout.trim().split('\n').sort(), [
        'app-a', 'app-b', 'keys', 'loadtest', 'netem-a', 'netem-b', 'netem-primary', 'primary', 'sidecar-a', 'sidecar-b',
    ]);
});

test('the files the Dockerfile and compose.yaml name exist', () => {
    const stages = parseDockerfile(fs.readFileSync(DOCKERFILE, 'utf8'));
    assert.deepEqual(stages.map((s) => s.name), ['netem', 'build', 'runtime'], 'stages (runtime last: the default target)');
    for (const s of stages) {
        assert.match(s.image, /^debian:bookworm(-slim)?$/, `stage ${s.name} is on Debian 12`);
        for (const { instr, args } of s.ins) {
            if (instr !== 'COPY' || args.startsWith('--from')) continue;
            const srcs = args.split(/\s+/).slice(0, -1);
            for (const src of srcs) {
                assert.ok(fs.existsSync(path.join(REPO, src)), `COPY ${src} exists`);
                // COPY keeps the mode: scripts must be executable in the tree (git keeps the bit).
                if (src.endsWith('.sh')) assert.ok(fs.statSync(path.join(REPO, src)).mode & 0o100, `${src} is executable`);
            }
        }
    }
    const runtime = stage(stages, 'runtime');
    const user = runtime.ins.find((i) => i.instr === 'USER');
    assert.ok(user && user.args !== 'root' && user.args !== '0', 'the runtime image runs as a non-root user');
    assert.ok(runtime.ins.some((i) => i.instr === 'HEALTHCHECK' && i.args.includes('boomerang-healthcheck')));
    assert.ok(fs.existsSync(path.join(REPO, 'docker', 'app', 'app.mjs')), 'compose mounts docker/app/app.mjs');
});

// ---------------------------------------------------------------- build stage

let built = null; // PREFIX/bin of the build below, for the runtime library test

test('the Dockerfile build stage, run as written in a clean tree, builds the shipped binaries', { timeout: BUILD_BUDGET_MS + 60000 }, async (t) => {
    const stages = parseDockerfile(fs.readFileSync(DOCKERFILE, 'utf8'));
    const build = stage(stages, 'build');
    const runs = build.ins.filter((i) => i.instr === 'RUN').map((i) => i.args);
    assert.ok(runs.length > 0 && runs.every((r) => r.startsWith('docker/build.sh ')), `RUN lines are docker/build.sh steps: ${runs}`);
    assert.ok(!runs.some((r) => r.startsWith('[')), 'shell-form RUN lines');
    const vars = stageVars(build);
    assert.ok('PREFIX' in vars && 'SQLITE_SRC' in vars && 'JOBS' in vars, 'the build stage declares PREFIX, SQLITE_SRC and JOBS');

    // The runtime stage copies the binaries from the build stage's PREFIX.
    const copy = stage(stages, 'runtime').ins.find((i) => i.instr === 'COPY' && i.args.startsWith('--from=build'));
    assert.ok(copy && copy.args.split(/\s+/)[1].replace(/\/$/, '') === `${vars.PREFIX}/bin`, `runtime copies ${vars.PREFIX}/bin`);

    const root = tmpDir('boomerang-docker-');
    const src = path.join(root, 'src');
    fs.mkdirSync(src);
    const nfiles = exportTree(src);
    const sqlite = findPinnedSqlite();
    t.diagnostic(`${nfiles} files in ${src}; SQLite: ${sqlite ?? 'fetched from npm by the build'}`);

    // A container's environment: PATH and HOME, then the stage's ARG and ENV, then ours.
    const env = { PATH: process.env.PATH, HOME: process.env.HOME || '/root', ...vars, JOBS: '2', PREFIX: path.join(root, 'prefix') };
    if (sqlite) env.SQLITE_SRC = sqlite;
    const log = path.join(root, 'build.log');
    const deadline = Date.now() + BUILD_BUDGET_MS;
    for (const cmd of runs) {
        const r = await runShell(cmd, { cwd: src, env, log, deadline });
        assert.ok(r.code === 0, `RUN ${cmd}: ${r.signal ? `killed by ${r.signal} (past ${BUILD_BUDGET_MS / 1000} s)` : `exit ${r.code}`}\n${tail(log)}`);
    }

    const bin = path.join(root, 'prefix', 'bin');
    assert.deepEqual(fs.readdirSync(bin).sort(), [...SHIPPED].sort(), 'exactly the shipped binaries');
    for (const b of SHIPPED) {
        const r = spawnSync(path.join(bin, b), ['--help'], { encoding: 'utf8', timeout: 10000 });
        assert.equal(r.status, 0, `${b} --help: ${r.error ?? ''}${r.stderr}`);
        assert.match(r.stdout + r.stderr, /usage/i, `${b} --help prints a usage`);
    }
    built = bin;
});

test('the runtime stage installs every shared library the binaries link', (t) => {
    if (!built) return t.skip('the build above did not finish');
    const wanted = aptPackages(stage(parseDockerfile(fs.readFileSync(DOCKERFILE, 'utf8')), 'runtime'));
    const base = new Set(['libc6', 'libgcc-s1', 'zlib1g']); // in debian:bookworm-slim already
    const owners = new Map(); // package -> libraries
    for (const b of SHIPPED) {
        const ldd = spawnSync('ldd', [path.join(built, b)], { encoding: 'utf8' });
        assert.equal(ldd.status, 0, `ldd ${b}`);
        assert.ok(!ldd.stdout.includes('not found'), `${b}: every library resolves\n${ldd.stdout}`);
        for (const m of ldd.stdout.matchAll(/=>\s+(\/\S+)/g)) {
            const lib = m[1];
            const real = fs.realpathSync(lib);
            const tries = [lib, `/usr${lib}`, real, real.replace(/^\/usr/, '')];
            let pkg = null;
            for (const p of tries) {
                const r = spawnSync('dpkg', ['-S', p], { encoding: 'utf8' });
                if (r.status === 0) {
                    pkg = r.stdout.split(':')[0];
                    break;
                }
            }
            assert.ok(pkg, `no Debian package owns ${lib}`);
            owners.set(pkg, [...(owners.get(pkg) ?? []), path.basename(lib)]);
        }
    }
    for (const [pkg, libs] of owners) {
        assert.ok(wanted.has(pkg) || base.has(pkg), `the runtime stage installs ${pkg} (for ${[...new Set(libs)].join(', ')})`);
    }
    t.diagnostic(`runtime packages used: ${[...owners.keys()].sort().join(' ')}`);
});

// ---------------------------------------------------------------- scripts

/** A loopback HTTP server answering each request with handler(req) = [status, body]. */
async function server(handler) {
    const seen = [];
    const srv = http.createServer((req, res) => {
        seen.push({ url: req.url, auth: req.headers.authorization });
        const [status, body] = handler(req);
        res.writeHead(status, { 'content-type': 'text/plain' }).end(body);
    });
    await new Promise((resolve) => srv.listen(0, '127.0.0.1', resolve));
    return { port: srv.address().port, seen, close: () => new Promise((resolve) => srv.close(resolve)) };
}

function healthcheck(args, env) {
    return new Promise((resolve) => {
        const p = spawn('bash', [path.join(REPO, 'docker', 'healthcheck.sh'), ...args], {
            env: { PATH: process.env.PATH, ...env },
            stdio: ['ignore', 'pipe', 'pipe'],
        });
        let out = '';
        p.stdout.on('data', (d) => (out += d));
        p.on('exit', (code) => resolve({ code, out }));
    });
}

test('boomerang-healthcheck: 200 is healthy, anything else is not; the app token goes to paths but /health', async () => {
    const srv = await server((req) => (req.url === '/health' ? [200, 'ok\n'] : req.headers.authorization === 'Bearer t0k' ? [200, '{}'] : [401, 'no token']));
    const dir = tmpDir('boomerang-hc-');
    fs.writeFileSync(path.join(dir, 'token'), 't0k\n');
    try {
        assert.equal((await healthcheck([], { BOOMERANG_LISTEN: `0.0.0.0:${srv.port}` })).code, 0, 'wildcard listen is asked on loopback');
        assert.equal((await healthcheck([], { BOOMERANG_METRICS_LISTEN: `127.0.0.1:${srv.port}`, BOOMERANG_LISTEN: '127.0.0.1:1' })).code, 0, 'metrics listener first');
        const no = await healthcheck(['/ready'], { BOOMERANG_LISTEN: `127.0.0.1:${srv.port}` });
        assert.equal(no.code, 1);
        assert.match(no.out, /401.*no token/s, 'says why');
        assert.equal((await healthcheck(['/ready'], { BOOMERANG_LISTEN: `127.0.0.1:${srv.port}`, BOOMERANG_APP_TOKEN_FILE: path.join(dir, 'token') })).code, 0);
        assert.deepEqual(srv.seen.map((s) => [s.url, s.auth]), [['/health', undefined], ['/health', undefined], ['/ready', undefined], ['/ready', 'Bearer t0k']]);
    } finally {
        await srv.close();
    }
    // Nothing listening: unhealthy, promptly.
    const closed = await healthcheck([], { BOOMERANG_HEALTH_ADDR: `127.0.0.1:${srv.port}` });
    assert.equal(closed.code, 1);
    assert.match(closed.out, /cannot connect/);
});

test('boomerang-netem refuses malformed delays before touching anything', () => {
    for (const spec of [[], ['primary'], ['primary:40ms'], ['primary:40:x']]) {
        const r = spawnSync('bash', [path.join(REPO, 'docker', 'netem.sh'), ...spec], { encoding: 'utf8', timeout: 10000 });
        assert.equal(r.status, 2, `netem.sh ${spec.join(' ')}: ${r.stderr}`);
    }
});
