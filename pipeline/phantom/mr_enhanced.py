"""Enhanced MR Image IOD (PS3.3 A.36.2, SOP class 1.2.840.10008.5.1.4.1.1.4.1): one multi-frame file.

Written by hand with pydicom (not highdicom's Legacy Converted Enhanced MR), so the file is
what an Enhanced-MR scanner sends. Modules: Patient, General Study, Patient Study, General
Series, MR Series, Frame of Reference, General Equipment, Enhanced General Equipment, Image
Pixel, Enhanced Contrast/Bolus, Multi-frame Functional Groups, Multi-frame Dimension,
Acquisition Context, Enhanced MR Image, MR Pulse Sequence, SOP Common. Functional groups:
shared Pixel Measures, Plane Orientation, Frame Anatomy, Pixel Value Transformation, Frame
VOI LUT, MR Image Frame Type, MR Timing and Related Parameters, MR FOV/Geometry, MR Echo,
MR Modifier, MR Imaging Modifier, MR Receive Coil, MR Transmit Coil, MR Averages, Contrast/
Bolus Usage; per frame Frame Content (stack 1, in-stack position) and Plane Position.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import EnhancedMRImageStorage

from pipeline.phantom.dicom_common import StudyMeta, phantom_uid, save, set_common, set_image_pixel, set_series
from pipeline.phantom.geometry import Grid
from pipeline.phantom.mr_single import Protocol, format_ds

__all__ = ["write_enhanced_image"]


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _typed(name: str, value: Any) -> object:
    """Convert decimal strings to float for the binary float VRs (FD, FL)."""
    tag = tag_for_keyword(name)
    if tag is None:
        raise ValueError(f"{name!r} is not a DICOM keyword")
    if dictionary_VR(tag) in ("FD", "FL"):
        return [float(v) for v in value] if isinstance(value, list) else float(value)
    return value


def _item(**attributes: object) -> Dataset:
    ds = Dataset()
    for name, value in attributes.items():
        setattr(ds, name, _typed(name, value))
    return ds


def _shared_groups(grid: Grid, study: StudyMeta, protocol: Protocol, window: tuple[float, float]) -> Dataset:
    m = grid.matrix
    slope = protocol.rescale_slope or 1.0
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([_item(
        PixelSpacing=[format_ds(grid.spacing[1]), format_ds(grid.spacing[0])],
        SliceThickness=format_ds(grid.slice_thickness),
        SpacingBetweenSlices=format_ds(grid.spacing[2]))])
    shared.PlaneOrientationSequence = Sequence([_item(
        ImageOrientationPatient=[format_ds(v) for v in (*m[:, 0], *m[:, 1])])])
    shared.FrameAnatomySequence = Sequence([_item(
        AnatomicRegionSequence=Sequence([_code("12738006", "SCT", "Brain")]), FrameLaterality="U")])
    shared.PixelValueTransformationSequence = Sequence([_item(
        RescaleIntercept="0", RescaleSlope=format_ds(slope), RescaleType="US")])
    shared.FrameVOILUTSequence = Sequence([_item(
        WindowCenter=format_ds(window[0]), WindowWidth=format_ds(window[1]))])
    shared.MRImageFrameTypeSequence = Sequence([_item(
        FrameType=["ORIGINAL", "PRIMARY", "VOLUME", "NONE"], PixelPresentation="MONOCHROME",
        VolumetricProperties="VOLUME", VolumeBasedCalculationTechnique="NONE",
        ComplexImageComponent="MAGNITUDE", AcquisitionContrast="T1")])
    shared.MRTimingAndRelatedParametersSequence = Sequence([_item(
        RepetitionTime=format_ds(protocol.repetition_time), FlipAngle=format_ds(protocol.flip_angle),
        EchoTrainLength=protocol.echo_train_length, RFEchoTrainLength=0, GradientEchoTrainLength=1,
        OperatingModeSequence=Sequence([
            _item(OperatingModeType="STATIC FIELD", OperatingMode="IEC_NORMAL"),
            _item(OperatingModeType="RF", OperatingMode="IEC_NORMAL"),
            _item(OperatingModeType="GRADIENT", OperatingMode="IEC_NORMAL")]),
        SpecificAbsorptionRateSequence=Sequence([_item(
            SpecificAbsorptionRateDefinition="IEC_WHOLE_BODY", SpecificAbsorptionRateValue="0.4")]),
        GradientOutputType="DB_DT", GradientOutput="20")])
    shared.MRFOVGeometrySequence = Sequence([_item(
        InPlanePhaseEncodingDirection="ROW", MRAcquisitionFrequencyEncodingSteps=grid.size[1],
        MRAcquisitionPhaseEncodingStepsInPlane=grid.size[0],
        MRAcquisitionPhaseEncodingStepsOutOfPlane=grid.size[2],
        PercentSampling="100", PercentPhaseFieldOfView="100")])
    shared.MREchoSequence = Sequence([_item(EffectiveEchoTime=format_ds(protocol.echo_time))])
    shared.MRModifierSequence = Sequence([_item(
        InversionRecovery="YES", InversionTimes=[format_ds(protocol.inversion_time or 900.0)],
        FlowCompensation="NONE", Spoiling="RF", T2Preparation="NO", SpectrallySelectedExcitation="NONE",
        SpatialPresaturation="NONE", PartialFourier="NO", ParallelAcquisition="NO")])
    shared.MRImagingModifierSequence = Sequence([_item(
        MagnetizationTransfer="NONE", BloodSignalNulling="NO", Tagging="NONE",
        TransmitterFrequency=format_ds(42.577478 * study.field_strength),
        PixelBandwidth=format_ds(protocol.pixel_bandwidth))])
    shared.MRReceiveCoilSequence = Sequence([_item(
        ReceiveCoilName="HEAD 20", ReceiveCoilManufacturerName="egfr-node phantom", ReceiveCoilType="MULTICOIL",
        QuadratureReceiveCoil="NO", MultiCoilDefinitionSequence=Sequence([_item(
            MultiCoilElementName="HE1-4", MultiCoilElementUsed="YES")]))])
    shared.MRTransmitCoilSequence = Sequence([_item(
        TransmitCoilName="BODY", TransmitCoilManufacturerName="egfr-node phantom", TransmitCoilType="BODY")])
    shared.MRAveragesSequence = Sequence([_item(NumberOfAverages="1")])
    shared.ContrastBolusUsageSequence = Sequence([_item(
        ContrastBolusAgentNumber=1, ContrastBolusAgentAdministered="YES", ContrastBolusAgentDetected="YES")])
    return shared


def _pulse_sequence(ds: Dataset, protocol: Protocol) -> None:
    """MR Pulse Sequence module of a 3D inversion-prepared spoiled gradient echo."""
    ds.PulseSequenceName = protocol.sequence_name.lstrip("*")
    ds.MRAcquisitionType = protocol.acquisition_type
    ds.EchoPulseSequence = "GRADIENT"
    ds.MultiPlanarExcitation = "NO"
    ds.PhaseContrast = "NO"
    ds.TimeOfFlightContrast = "NO"
    ds.SteadyStatePulseSequence = "NONE"
    ds.EchoPlanarPulseSequence = "NO"
    ds.SaturationRecovery = "NO"
    ds.SpectrallySelectedSuppression = "NONE"
    ds.OversamplingPhase = "NONE"
    ds.GeometryOfKSpaceTraversal = "RECTILINEAR"
    ds.SegmentedKSpaceTraversal = "SINGLE"
    ds.RectilinearPhaseEncodeReordering = "LINEAR"
    ds.CoverageOfKSpace = "FULL"
    ds.NumberOfKSpaceTrajectories = 1


def write_enhanced_image(folder: Path, stored: np.ndarray, grid: Grid, study: StudyMeta, protocol: Protocol,
                         uid_key: tuple[object, ...], window: tuple[float, float]) -> Dataset:
    """Write ``stored`` ([k, rows, columns] uint16) as one Enhanced MR file; frame k + 1 is slice k."""
    ds = Dataset()
    set_common(ds, study)
    ds.SOPClassUID = EnhancedMRImageStorage
    ds.SOPInstanceUID = phantom_uid(*uid_key, "enhanced-image")
    set_series(ds, study, modality="MR", series_uid=phantom_uid(*uid_key, "series"), series_number=protocol.series_number,
               series_description=protocol.series_description, protocol_name=protocol.series_description)
    ds.InstanceNumber = 1
    ds.ContentDate = study.study_date
    ds.ContentTime = study.study_time
    ds.AcquisitionDateTime = study.study_date + study.study_time
    ds.AcquisitionDuration = 312.0
    ds.AcquisitionNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.PixelPresentation = "MONOCHROME"
    ds.VolumetricProperties = "VOLUME"
    ds.VolumeBasedCalculationTechnique = "NONE"
    ds.ComplexImageComponent = "MAGNITUDE"
    ds.AcquisitionContrast = "T1"
    ds.ContentQualification = "PRODUCT"
    ds.ResonantNucleus = "1H"
    ds.KSpaceFiltering = "NONE"
    ds.MagneticFieldStrength = format_ds(study.field_strength)
    ds.ApplicableSafetyStandardAgency = "IEC"
    ds.ImageComments = "egfr-node phantom"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PresentationLUTShape = "IDENTITY"
    _pulse_sequence(ds, protocol)
    ds.ContrastBolusAgentSequence = Sequence([_item(
        CodeValue="407976008", CodingSchemeDesignator="SCT", CodeMeaning="Gadobutrol",
        ContrastBolusAgentNumber=1, ContrastBolusAdministrationRouteSequence=Sequence([
            _code("47625008", "SCT", "Intravenous route")]),
        ContrastBolusIngredientCodeSequence=Sequence([_code("38007005", "SCT", "Gadolinium")]),
        ContrastBolusVolume="7.5", ContrastBolusIngredientConcentration="604.72")])
    ds.AcquisitionContextSequence = Sequence([])
    set_image_pixel(ds, rows=grid.size[1], columns=grid.size[0])
    ds.NumberOfFrames = stored.shape[0]

    dimension_uid = phantom_uid(*uid_key, "dimension-organization")
    ds.DimensionOrganizationSequence = Sequence([_item(DimensionOrganizationUID=dimension_uid)])
    ds.DimensionOrganizationType = "3D"
    ds.DimensionIndexSequence = Sequence([
        _item(DimensionOrganizationUID=dimension_uid, DimensionIndexPointer=Tag(0x0020, 0x9056),
              FunctionalGroupPointer=Tag(0x0020, 0x9111), DimensionDescriptionLabel="Stack ID"),
        _item(DimensionOrganizationUID=dimension_uid, DimensionIndexPointer=Tag(0x0020, 0x9057),
              FunctionalGroupPointer=Tag(0x0020, 0x9111), DimensionDescriptionLabel="In-Stack Position Number"),
    ])
    ds.SharedFunctionalGroupsSequence = Sequence([_shared_groups(grid, study, protocol, window)])
    frames = []
    for k in range(stored.shape[0]):
        frame = Dataset()
        frame.FrameContentSequence = Sequence([_item(
            StackID="1", InStackPositionNumber=k + 1, DimensionIndexValues=[1, k + 1],
            FrameAcquisitionNumber=1, FrameAcquisitionDateTime=study.study_date + study.study_time,
            FrameReferenceDateTime=study.study_date + study.study_time, FrameAcquisitionDuration="312.0")])
        frame.PlanePositionSequence = Sequence([_item(
            ImagePositionPatient=[format_ds(v) for v in grid.slice_position(k)])])
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = np.ascontiguousarray(stored, dtype="<u2").tobytes()
    save(ds, folder / "IM0001.dcm")
    return ds
