#!/usr/bin/env node
// Runs the benchmark scenarios of the performance issue, one after another, and writes:
//   bench/results/<scenario>-latest.json   every run's raw figures, per scenario
//   docs/benchmarks.json                   each scenario's summary, goals and figures
//   docs/benchmarks.svg                    the chart: every goal, measured against its target
//
//   npm run bench                                    (builds dist/ in production mode, then this)
//   BENCH_ONLY=transfer,folder node bench/run.mjs    (some scenarios; the others keep their
//                                                     previous entry in docs/benchmarks.json)
//
// Each scenario is bench/<name>.mjs and runs alone too (`node bench/<name>.mjs`). Methods,
// environment variables and durations: bench/SCENARIOS.md.

import * as fs from 'node:fs';
import * as path from 'node:path';
import { renderChart } from './chart.mjs';
import { ROOT, closeAllScopes, ensureTools, gitDescribe, log, machineInfo, printGoals, runScenario } from './lib.mjs';
import * as transfer from './transfer.mjs';
import * as send from './send.mjs';
import * as internet from './internet.mjs';
import * as folder from './folder.mjs';
import * as resume from './resume.mjs';
import * as concurrent from './concurrent.mjs';
import * as list from './list.mjs';
import * as idle from './idle.mjs';
import * as memory from './memory.mjs';
import * as multiplex from './multiplex.mjs';
import * as delta from './delta.mjs';
import * as watch from './watch.mjs';

const SCENARIOS = [transfer, folder, resume, concurrent, list, idle, memory, multiplex, send, internet, delta, watch];
const DOCS_DIR = path.resolve(process.env.BENCH_DOCS_DIR ?? path.join(ROOT, 'docs'));

function selectedScenarios() {
  const only = (process.env.BENCH_ONLY ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  if (only.length === 0) return SCENARIOS;
  const unknown = only.filter((n) => !SCENARIOS.some((s) => s.name === n));
  if (unknown.length) throw new Error(`BENCH_ONLY: no scenario named ${unknown.join(', ')} (there are ${SCENARIOS.map((s) => s.name).join(', ')})`);
  return SCENARIOS.filter((s) => only.includes(s.name));
}

/** What docs/benchmarks.json keeps of a scenario's record: everything but the raw runs. */
function docEntry(record) {
  const { raw, machine, ...entry } = record;
  return entry;
}

async function main() {
  const scenarios = selectedScenarios();
  ensureTools(scenarios.flatMap((s) => s.tools ?? []));
  const machine = machineInfo();
  const commit = gitDescribe();
  const jsonFile = path.join(DOCS_DIR, 'benchmarks.json');
  const previous = fs.existsSync(jsonFile) ? JSON.parse(fs.readFileSync(jsonFile, 'utf8')) : { scenarios: {} };

  const fresh = {};
  let failed = 0;
  for (const scenario of scenarios) {
    try {
      fresh[scenario.name] = docEntry(await runScenario(scenario, { machine, commit }));
    } catch (err) {
      failed++;
      log(`${scenario.name} failed: ${err?.stack ?? err}`);
      fresh[scenario.name] = { scenario: scenario.name, title: scenario.title, date: new Date().toISOString(), commit, error: String(err?.message ?? err).split('\n')[0], goals: [] };
    }
  }

  // Scenarios not run this time keep their last entry; the order is always the scenarios' own.
  const merged = {};
  for (const s of SCENARIOS) {
    const entry = fresh[s.name] ?? previous.scenarios?.[s.name];
    if (entry) merged[s.name] = entry;
  }
  const goals = Object.values(merged).flatMap((s) => s.goals ?? []);
  const doc = {
    generated: new Date().toISOString(),
    commit,
    machine,
    goalsMet: `${goals.filter((g) => g.met).length} of ${goals.length}`,
    note: 'Written by bench/run.mjs (npm run bench). Raw runs: bench/results/<scenario>-latest.json. Each scenario has its own date and commit.',
    scenarios: merged,
  };
  fs.mkdirSync(DOCS_DIR, { recursive: true });
  fs.writeFileSync(jsonFile, `${JSON.stringify(doc, null, 2)}\n`);
  const svgFile = path.join(DOCS_DIR, 'benchmarks.svg');
  fs.writeFileSync(svgFile, renderChart(doc));

  console.log(`\nGoals (${doc.goalsMet} met):`);
  for (const [name, s] of Object.entries(merged)) {
    if (s.error) console.log(`  FAILED   ${name}: ${s.error}`);
    else printGoals(s.goals);
  }
  console.log(`\nwritten: ${path.relative(process.cwd(), jsonFile)}, ${path.relative(process.cwd(), svgFile)}`);
  if (failed) process.exitCode = 1;
}

main()
  .catch((err) => {
    log(`failed: ${err?.stack ?? err}`);
    process.exitCode = 1;
  })
  .finally(() => closeAllScopes());
