// Check spec/vectors/tasks-v1.json with an independent JavaScript implementation of
// canonical JSON (spec/tasks.md): node spec/vectors/check_tasks_vectors.js spec/vectors/tasks-v1.json
'use strict';
const crypto = require('crypto');
const fs = require('fs');

function canonical(v) {
  if (v === null) return 'null';
  if (typeof v === 'boolean') return v ? 'true' : 'false';
  if (typeof v === 'number') {
    if (!Number.isFinite(v)) throw new Error('non-finite number');
    return Object.is(v, -0) ? '0' : String(v);
  }
  if (typeof v === 'string') return JSON.stringify(v);
  if (Array.isArray(v)) return '[' + v.map(canonical).join(',') + ']';
  const keys = Object.keys(v).sort(); // default sort: UTF-16 code units
  return '{' + keys.map((k) => JSON.stringify(k) + ':' + canonical(v[k])).join(',') + '}';
}

const vectors = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
let failures = 0;
for (const c of vectors.cases) {
  const text = canonical({ function_id: c.function_id, kwargs: JSON.parse(c.kwargs_json) });
  const hash = crypto.createHash('sha256').update(vectors.hash_prefix + text, 'utf8').digest('hex');
  if (text !== c.canonical || hash !== c.task_hash) {
    failures++;
    console.log('MISMATCH ' + c.description + '\n  js:     ' + text + '\n  vector: ' + c.canonical);
  }
}
console.log(failures ? failures + ' mismatches' : 'ok ' + vectors.cases.length + ' cases');
process.exit(failures ? 1 : 0);
