// Typeset TeX strings with MathJax 3 (base and ams, as a notebook's MathJax loads them) and
// report, per string, the first error: an undefined macro or environment, or any merror node.
// Reads a JSON list of TeX strings (without $$) on stdin, writes a JSON list of null or messages.
const path = require('path');
const root = path.join(__dirname, '.node', 'node_modules', 'mathjax-full', 'js');
const {mathjax} = require(path.join(root, 'mathjax.js'));
const {TeX} = require(path.join(root, 'input', 'tex.js'));
const {liteAdaptor} = require(path.join(root, 'adaptors', 'liteAdaptor.js'));
const {RegisterHTMLHandler} = require(path.join(root, 'handlers', 'html.js'));
const {SerializedMmlVisitor} = require(path.join(root, 'core', 'MmlTree', 'SerializedMmlVisitor.js'));
const {STATE} = require(path.join(root, 'core', 'MathItem.js'));
require(path.join(root, 'input', 'tex', 'base', 'BaseConfiguration.js'));
require(path.join(root, 'input', 'tex', 'ams', 'AmsConfiguration.js'));

RegisterHTMLHandler(liteAdaptor());
const tex = new TeX({packages: ['base', 'ams'], formatError: (jax, err) => { throw err; }});
const doc = mathjax.document('', {InputJax: tex});
const visitor = new SerializedMmlVisitor();

let input = '';
process.stdin.on('data', (chunk) => { input += chunk; });
process.stdin.on('end', () => {
  const results = JSON.parse(input).map((source) => {
    try {
      const mml = visitor.visitTree(doc.convert(source, {display: true, end: STATE.CONVERT}));
      return /<merror/.test(mml) ? 'merror in the output' : null;
    } catch (err) {
      return err.message || String(err);
    }
  });
  process.stdout.write(JSON.stringify(results));
});
