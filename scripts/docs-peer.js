// The peer side of `chorus-bench docs`: multiprocess-store (npm) doing the
// same work as a Chorus child, driven by the same line protocol.
//
//   node docs-peer.js MODULE_DIR STORE_DIR ID COUNT
//
// Prints `ready`; then for each line on stdin (`create`, `get`, `update`,
// `history`) does COUNT operations on documents p{ID}-{j} of about 1 KiB
// and prints `ok`; `history` updates one document COUNT times and prints
// `ok`. Written for this benchmark; it only calls the package's public API.
'use strict';
const path = require('path');
const readline = require('readline');

const [moduleDir, storeDir, id, countText] = process.argv.slice(2);
const count = parseInt(countText, 10);
const objectStore = require(path.join(moduleDir, 'node_modules', 'multiprocess-store'));
const payload = 'x'.repeat(1000);

async function main() {
  const store = await objectStore.createStore(storeDir);
  const phases = {
    create: async () => {
      for (let j = 0; j < count; j++) {
        await store.createObject({ _id: `p${id}-${j}`, n: j, payload });
      }
    },
    get: async () => {
      for (let j = 0; j < count; j++) {
        const doc = await store.getObject(`p${id}-${j}`);
        if (doc.n !== j) throw new Error(`read back ${doc.n}, wrote ${j}`);
      }
    },
    update: async () => {
      for (let j = 0; j < count; j++) {
        const doc = await store.getObject(`p${id}-${j}`);
        doc.n = j + 1;
        await store.updateObject(doc);
      }
    },
    history: async () => {
      await store.createObject({ _id: `h${id}`, n: 0, payload }).catch(() => {});
      for (let j = 0; j < count; j++) {
        const doc = await store.getObject(`h${id}`);
        doc.n = j + 1;
        await store.updateObject(doc);
      }
    },
  };
  console.log('ready');
  const rl = readline.createInterface({ input: process.stdin });
  for await (const line of rl) {
    const phase = phases[line.trim()];
    if (!phase) throw new Error(`unknown phase ${line}`);
    await phase();
    console.log('ok');
  }
}

main().catch((e) => {
  console.error(`docs-peer: ${e.stack || e}`);
  process.exit(1);
});
