-- Orthanc: route a brain MRI study to egfr-node once it is stable and holds an MR series and
-- a lesion mask (SEG or RTSTRUCT). Only the images and masks are sent; the node's results
-- (its SR, the SEG it derives from an RTSTRUCT, its result card) come back into this study
-- and are never routed to the node again. A study that already holds the node's SR is not
-- routed again either (re-run it from the node: `egfr-node queue replay STUDY --rerun`).

EGFR_MODALITY = 'egfr-node'               -- the DicomModalities entry of the node
RESULT_MARKERS = { 'EGFR prediction', 'EGFR result card', 'by egfr-node' }

local function is_node_result(description)
  for _, marker in ipairs(RESULT_MARKERS) do
    if description and string.find(description, marker, 1, true) then
      return true
    end
  end
  return false
end

function OnStableStudy(studyId, tags, metadata)
  local series = ParseJson(RestApiGet('/studies/' .. studyId .. '/series'))
  local images, masks, answered = {}, {}, false
  for _, s in ipairs(series) do
    local modality = s['MainDicomTags']['Modality']
    local description = s['MainDicomTags']['SeriesDescription']
    if is_node_result(description) then
      answered = true
    elseif modality == 'MR' then
      table.insert(images, s['ID'])
    elseif modality == 'SEG' or modality == 'RTSTRUCT' then
      table.insert(masks, s['ID'])
    end
  end
  if answered or #images == 0 or #masks == 0 then
    return
  end
  local resources = {}
  for _, id in ipairs(images) do table.insert(resources, id) end
  for _, id in ipairs(masks) do table.insert(resources, id) end
  print('egfr-node routing: study ' .. studyId .. ', ' .. #images .. ' MR and ' .. #masks .. ' mask series')
  RestApiPost('/modalities/' .. EGFR_MODALITY .. '/store', DumpJson(resources, true))
end
