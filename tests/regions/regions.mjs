#!/usr/bin/env node
// The region test's driver (run by tests/regions/run.sh, which makes the
// namespaces): starts the topology, runs the three scenarios, prints the table
// of checks, writes the figures to OUT/regions.json, exits 1 on any failed check.
//
//   node regions.mjs --mode netns|loopback [--id RUNID] --out DIR [--quick]
//
// Environment: BOOMERANG_BIN (binaries), REGIONS_LOAD=auto|bench|loadgen,
// REGIONS_BENCH_BEARER_FLAG (the bench's flag taking a bearer token file),
// REGIONS_SCENARIOS (default "steady,partition,restart"), REGIONS_RATE (100),
// REGIONS_STEADY_SECONDS (15; 8 with --quick), and lib.mjs's REGIONS_DELAYS, REGIONS_LOAD_ARGS.
import fs from 'node:fs';
import path from 'node:path';

import { Checks, DELAYS, scenarioPartition, scenarioRestart, scenarioSteady, startTopology, stopAll } from './lib.mjs';

function arg(name, dflt) {
    const i = process.argv.indexOf(`--${name}`);
    return i > 0 ? process.argv[i + 1] : dflt;
}

async function main() {
    const mode = arg('mode', 'loopback');
    const id = arg('id', String(process.pid));
    const out = path.resolve(arg('out', 'tests/regions/out'));
    const quick = process.argv.includes('--quick');
    const rate = Number(process.env.REGIONS_RATE || (quick ? 60 : 100));
    const which = (process.env.REGIONS_SCENARIOS || 'steady,partition,restart').split(',');
    const work = path.join(out, `run-${id}`);
    const log = (s) => process.stdout.write(`regions: ${s}\n`);
    const c = new Checks();
    const t0 = Date.now();
    const figs = { mode, started_at: new Date().toISOString(), one_way_delay_ms: DELAYS, scenarios: {} };
    let topo;
    try {
        topo = await startTopology({ mode, id, dir: work, log });
        figs.load = topo.load.kind;
        figs.app_access = mode !== 'netns' ? 'loopback' : topo.appRelays ? 'sidecars on 127.0.0.1, app relays (0 ms) on the region address' : 'sidecars on the region address, bearer token';
        log(`mode ${mode}; load: ${topo.load.kind}; app access: ${figs.app_access}`);
        const scen = {
            steady: () => scenarioSteady(topo, c, { duration: Number(process.env.REGIONS_STEADY_SECONDS || (quick ? 8 : 15)), rate }),
            partition: () => scenarioPartition(topo, c, quick ? { duration: 16, rate, atMs: 3000, cutMs: 4000 } : { duration: 25, rate }),
            restart: () => scenarioRestart(topo, c, { duration: quick ? 10 : 15, rate, atMs: quick ? 3000 : 5000 }),
        };
        for (const s of which) {
            log(`scenario ${s} ...`);
            const ts = Date.now();
            const { fig, run } = await scen[s]();
            fig.wall_s = (Date.now() - ts) / 1000;
            figs.scenarios[s] = fig;
            if (run?.out) process.stdout.write(run.out.replace(/^/gm, `  [${s}] `) + '\n');
        }
    } catch (e) {
        c.add('setup', 'topology and load ran', false, e.message.split('\n')[0].slice(0, 80), 'no exception');
        process.stderr.write(`regions: ${e.stack || e}\n`);
    } finally {
        await stopAll();
    }
    figs.wall_s = (Date.now() - t0) / 1000;
    figs.checks = c.rows;
    figs.passed = c.failed.length === 0;
    fs.mkdirSync(out, { recursive: true });
    fs.writeFileSync(path.join(out, 'regions.json'), JSON.stringify(figs, null, 1));
    process.stdout.write(`\n${c.table()}\n\nregions: mode ${mode}, load ${figs.load || '?'}, ${figs.wall_s.toFixed(0)} s; ` +
        `${c.rows.length - c.failed.length}/${c.rows.length} checks passed; figures in ${path.join(out, 'regions.json')}, logs in ${work}\n`);
    return c.failed.length ? 1 : 0;
}

for (const sig of ['SIGINT', 'SIGTERM']) {
    process.on(sig, () => {
        process.stderr.write(`regions: ${sig}, stopping\n`);
        stopAll().finally(() => process.exit(130));
    });
}

main().then(
    (code) => process.exit(code),
    (e) => {
        process.stderr.write(`regions: ${e.stack || e}\n`);
        process.exit(1);
    },
);
