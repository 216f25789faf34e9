// Reads a DICOM SR file as OHIF's SR extension does: dcmjs parses and naturalizes it, and
// @cornerstonejs/adapters' MeasurementReport.generateToolState turns its TID 1500 groups into
// Cornerstone annotations. The image planes the annotations need come from a JSON file
// (what OHIF's metadata provider would hold for the source images).
//
//   node read_sr.mjs SR_FILE PLANES_JSON   ->  JSON on stdout
//
// PLANES_JSON: {"<SOPInstanceUID>:<frame>": {"imagePositionPatient": [..], "rowCosines": [..],
//   "columnCosines": [..], "rowPixelSpacing": n, "columnPixelSpacing": n, "frameOfReferenceUID": "..",
//   "rows": n, "columns": n}, ...}
import { readFileSync } from 'node:fs';

// The adapters' logger binds the console's methods when it is created: take them over first,
// so every warning it logs is reported in the JSON (and stdout stays JSON).
const warnings = [];
const describe = a => (a instanceof Error ? `${a.name}: ${a.message}` : typeof a === 'string' ? a : '');
console.warn = (...args) => warnings.push(args.map(describe).join(' ').trim());
console.error = console.warn;
console.info = () => {};
console.log = () => {};
console.debug = () => {};
const { default: dcmjs } = await import('dcmjs');
const { metaData } = await import('@cornerstonejs/core');
const { adaptersSR } = await import('@cornerstonejs/adapters');

const [srPath, planesPath] = process.argv.slice(2);
const planes = JSON.parse(readFileSync(planesPath, 'utf8'));
const imageIdOf = key => `egfr:${key}`;
const planeOf = imageId => planes[imageId.slice('egfr:'.length)];

metaData.addProvider((type, imageId) => {
  const plane = planeOf(imageId);
  if (!plane) return undefined;
  if (type === 'imagePlaneModule') return plane;
  if (type === 'imagePixelModule') return { rows: plane.rows, columns: plane.columns };
  return undefined;
}, 10000);

const bytes = readFileSync(srPath);
const message = dcmjs.data.DicomMessage.readFile(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
const dataset = dcmjs.data.DicomMetaDictionary.naturalizeDataset(message.dict);
const toArray = x => (Array.isArray(x) ? x : x === undefined ? [] : [x]);

const sopInstanceUIDToImageIdMap = {};
for (const key of Object.keys(planes)) sopInstanceUIDToImageIdMap[key] = imageIdOf(key);

const toolState = adaptersSR.Cornerstone3D.MeasurementReport.generateToolState(
  dataset, sopInstanceUIDToImageIdMap, metaData);

// What OHIF's measurement panel shows beside the annotation: the NUM items of each group.
const report = toArray(dataset.ContentSequence).find(c => c.ConceptNameCodeSequence?.CodeMeaning === 'Imaging Measurements');
const groups = toArray(report?.ContentSequence).map(group => {
  const items = toArray(group.ContentSequence);
  const text = meaning => items.find(i => i.ConceptNameCodeSequence?.CodeMeaning === meaning);
  return {
    trackingIdentifier: text('Tracking Identifier')?.TextValue,
    trackingUID: text('Tracking Unique Identifier')?.UID,
    numbers: items.filter(i => i.ValueType === 'NUM').map(i => ({
      name: i.ConceptNameCodeSequence.CodeMeaning,
      value: toArray(i.MeasuredValueSequence)[0]?.NumericValue,
      unit: toArray(toArray(i.MeasuredValueSequence)[0]?.MeasurementUnitsCodeSequence)[0]?.CodeValue,
    })),
  };
});

const measurements = [];
for (const [toolType, list] of Object.entries(toolState)) {
  for (const m of list) {
    measurements.push({
      toolType,
      trackingUID: m.TrackingUniqueIdentifier,
      label: m.annotation?.data?.label,
      text: m.annotation?.data?.text,
      referencedImageId: m.annotation?.metadata?.referencedImageId,
      frameOfReferenceUID: m.annotation?.metadata?.FrameOfReferenceUID,
      points: m.annotation?.data?.handles?.points,
      finding: m.finding ? { CodeValue: m.finding.CodeValue, CodeMeaning: m.finding.CodeMeaning } : null,
    });
  }
}
process.stdout.write(JSON.stringify({ sopClassUID: dataset.SOPClassUID, measurements, groups, warnings }));
