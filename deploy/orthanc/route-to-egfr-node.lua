-- Orthanc: route a brain MRI study to egfr-node once it is stable and holds an MR series and
-- a lesion mask: a SEG, an RTSTRUCT, or an SR (a viewer such as OHIF saves a lesion outline as
-- an SR measurement report; the node decides by its content whether it outlines a lesion).
-- Only the images and masks are sent; the node's results (its SR, the SEG it derives from an
-- RTSTRUCT or an outline, its result card) come back into this study and are never routed to
-- the node again. A study that already holds the node's results is routed again only when a
-- mask arrived after them (a radiologist outlined the lesion, or saved the outline again);
-- otherwise re-run it from the node: `egfr-node queue replay STUDY --rerun`.

EGFR_MODALITY = 'egfr-node'               -- the DicomModalities entry of the node
-- true: send only the masks; the node fetches the images they name from its [[sources]]
-- (this Orthanc, by C-MOVE, C-GET or WADO-RS), as a site whose rule forwards masks only
MASKS_ONLY = false
RESULT_MARKERS = { 'EGFR prediction', 'EGFR result card', 'by egfr-node' }
MASK_MODALITIES = { SEG = true, RTSTRUCT = true, SR = true }

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
  local images, masks = {}, {}
  local answered_at, newest_mask = nil, ''
  for _, s in ipairs(series) do
    local modality = s['MainDicomTags']['Modality']
    local description = s['MainDicomTags']['SeriesDescription']
    local updated = s['LastUpdate'] or ''
    if is_node_result(description) then
      if answered_at == nil or updated > answered_at then answered_at = updated end
    elseif modality == 'MR' then
      table.insert(images, s['ID'])
    elseif MASK_MODALITIES[modality] then
      table.insert(masks, s['ID'])
      if updated > newest_mask then newest_mask = updated end
    end
  end
  if #images == 0 or #masks == 0 then
    return
  end
  if answered_at ~= nil and newest_mask <= answered_at then
    return  -- answered, and no mask arrived since
  end
  local resources = {}
  if not MASKS_ONLY then
    for _, id in ipairs(images) do table.insert(resources, id) end
  end
  for _, id in ipairs(masks) do table.insert(resources, id) end
  print('egfr-node routing: study ' .. studyId .. ', ' .. (MASKS_ONLY and 0 or #images) .. ' MR and ' .. #masks .. ' mask series')
  RestApiPost('/modalities/' .. EGFR_MODALITY .. '/store', DumpJson(resources, true))
end
