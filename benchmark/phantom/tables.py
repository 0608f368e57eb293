"""Every number of the synthetic-heart phantom: tissues and their intensities, the sampling grid, the subject
draws, the anatomy and the imaging model.

Lengths are in mm. Positions of the body and spine are in world coordinates (x towards the patient's left, y
towards posterior, z towards superior); positions of the heart are in the canonical heart frame, which the
subject's pose maps to the world. :func:`benchmark.phantom.parameters` gathers these tables into the JSON that keys
the ``synthetic-heart`` slice cache.
"""

from __future__ import annotations

import numpy as np

CLASSES = {"MYO": 1, "LAC": 2, "LVC": 3, "AA": 4}  # 0 = background
MODALITIES = ("mr", "ct")
MODALITY_CODE = {"mr": 0, "ct": 1}  # second word of each case's random seed

# Tissue codes of the tissue map returned with ``return_tissues=True``.
TISSUES = {
    "air": 0, "lung": 1, "fat": 2, "soft": 3, "liver": 4,
    "myocardium": 5, "blood": 6, "bone": 7, "marrow": 8, "fluid": 9,
}

# Nominal tissue means per modality. MR: arbitrary units, bSSFP-like. CT: HU of an arterial-phase cardiac CT
# angiogram (CTA, as MM-WHS CT), iodinated blood far brighter than the enhanced myocardium. Coronary CTA asks for a
# lumen enhancement of at least about 250-300 HU (SCCT guidelines for the performance and acquisition of coronary
# CTA, Abbara et al., J Cardiovasc Comput Tomogr 10:435-449, 2016); well-timed boluses give the aortic root about
# 420-480 HU on average, up to ~550 HU one SD above (PMID 20016900), and normal enhanced left-ventricular myocardium
# about 80-105 HU (J Cardiovasc Comput Tomogr 5:406-411, 2011, doi:10.1016/j.jcct.2011.10.003). Blood sits at the
# bright end of that range so that the pools stay far above the myocardium in a window that reaches from air to
# bone; "bone" is a thin cortical shell, partial-volume averaged at this voxel size, and the brightest tissue.
TISSUE_INTENSITY = {
    "mr": {
        "air": 0.0, "lung": 45.0, "fat": 540.0, "soft": 300.0, "liver": 340.0,
        "myocardium": 190.0, "blood": 820.0, "bone": 50.0, "marrow": 420.0, "fluid": 620.0,
    },
    "ct": {
        "air": -1000.0, "lung": -830.0, "fat": -100.0, "soft": 50.0, "liver": 80.0,
        "myocardium": 100.0, "blood": 550.0, "bone": 850.0, "marrow": 260.0, "fluid": 15.0,
    },
}

# ----------------------------------------------------------------------------------------------------------------
# structures: finer than tissues, they also carry the label
# ----------------------------------------------------------------------------------------------------------------

S_AIR, S_LUNG, S_FAT, S_SOFT, S_LIVER = 0, 1, 2, 3, 4
S_BONE, S_MARROW, S_FLUID = 5, 6, 7
S_HWALL, S_BLOOD = 8, 9  # unlabelled heart wall / unlabelled blood
S_MYO, S_LVC, S_LAC, S_AA = 10, 11, 12, 13

STRUCTURE_TISSUE = (  # tissue of each structure id
    "air", "lung", "fat", "soft", "liver", "bone", "marrow", "fluid",
    "myocardium", "blood", "myocardium", "blood", "blood", "blood",
)
STRUCTURE_CLASS = {S_MYO: "MYO", S_LAC: "LAC", S_LVC: "LVC", S_AA: "AA"}  # every other structure is background

# lookup tables: structure id -> tissue code, structure id -> label
STRUCT_TISSUE = np.array([TISSUES[name] for name in STRUCTURE_TISSUE], dtype=np.uint8)
STRUCT_LABEL = np.array([CLASSES[STRUCTURE_CLASS[s]] if s in STRUCTURE_CLASS else 0
                         for s in range(len(STRUCTURE_TISSUE))], dtype=np.uint8)

# ----------------------------------------------------------------------------------------------------------------
# sampling grid
# ----------------------------------------------------------------------------------------------------------------

GRID = {"in_plane_voxels": 112, "in_plane_mm": 1.6}  # centred on the heart
SLICES = {  # slice spacing (mm), number of slices, through-plane slice profile (weights of samples across a slab)
    "mr": {"spacing": 3.2, "count": 40, "profile": (0.25, 0.5, 0.25)},
    "ct": {"spacing": 2.0, "count": 64, "profile": (1.0,)},
}
CURVE_STEP = 2.5  # spacing of the points sampled along a vessel's centre line
DEFORMATION = {"controls": (4, 4, 4), "z_factor": 0.7}  # elastic displacement: control points per axis, z share
SMOOTH_BASIS = {"knots": (-0.15, 1.15), "width": 0.75}  # Gaussian knots of smooth fields (fraction of the axis)

# ----------------------------------------------------------------------------------------------------------------
# subject draws, in the order the random generator makes them
# ----------------------------------------------------------------------------------------------------------------

# ("uniform", (lo, hi)) is one number, ("uniform", ((lo, hi), ...)) a vector of them; ("normal", (mean, sd, n)).
SUBJECT = (
    ("angles", "normal", (0.0, 7.0, 3)),  # heart rotation about x, y, z in degrees, clipped to ANGLE_LIMIT
    ("scale", "uniform", (0.85, 1.15)),
    ("shift", "uniform", ((-4.0, 4.0), (-4.0, 4.0), (-5.0, 5.0))),
    ("disp_amp", "uniform", (2.0, 5.0)),
    # left ventricle: cavity semi-axes (long, two short) and myocardial thickness
    ("lv_long", "uniform", (36.0, 44.0)),
    ("lv_r1", "uniform", (19.0, 24.0)),
    ("lv_r2", "uniform", (19.0, 24.0)),
    ("myo", "uniform", (8.5, 11.5)),
    ("axis_tilt", "normal", (0.0, 0.06, 3)),
    # other chambers: LA semi-axes (along the LV axis, posterior, lateral); RV (long as a share of the LV's,
    # thickness, width); RA semi-axes
    ("la", "uniform", ((19.0, 25.0), (17.0, 22.0), (24.0, 32.0))),
    ("rv", "uniform", ((0.75, 0.95), (14.0, 19.0), (28.0, 36.0))),
    ("ra", "uniform", ((18.0, 24.0), (17.0, 22.0), (20.0, 27.0))),
    # vessels: radii, and the ascending aorta's arch as offsets from its valve
    ("aa_r", "uniform", (11.5, 14.5)),
    ("aa_bend", "uniform", ((-8.0, 4.0), (-14.0, -4.0), (35.0, 48.0))),
    ("aa_top", "uniform", ((-10.0, 2.0), (18.0, 34.0), (72.0, 85.0))),
    ("pa_r", "uniform", (10.0, 13.0)),
    ("da_r", "uniform", (9.0, 12.0)),
    ("da_xy", "uniform", ((16.0, 24.0), (53.0, 60.0))),
    ("svc_r", "uniform", (8.0, 10.5)),
    ("ivc_r", "uniform", (10.0, 12.5)),
    ("epi_fat", "uniform", (2.0, 7.0)),
    # body: semi-axes of the outline, its centre's y, subcutaneous fat, chest-wall muscle, diaphragm apex, spine
    ("body", "uniform", ((140.0, 170.0), (90.0, 104.0))),
    ("body_y", "uniform", (10.0, 20.0)),
    ("sc_fat", "uniform", (5.0, 16.0)),
    ("muscle", "uniform", (6.0, 12.0)),
    ("dia_z", "uniform", (-34.0, -22.0)),
    ("spine_y", "uniform", (70.0, 78.0)),
)
ANGLE_LIMIT = 15.0  # degrees

# ----------------------------------------------------------------------------------------------------------------
# thorax (world frame); boxes bound the voxels a painter visits, ALL_Z spans every slice
# ----------------------------------------------------------------------------------------------------------------

ALL_Z = 1e3
PARAVERTEBRAL = {"box_x": (-60.0, 60.0), "box_y": (-45.0, 60.0), "centre_y": 18.0, "semi": (48.0, 40.0)}  # y: spine
MEDIASTINAL_FAT = {"box_x": (-40.0, 35.0), "box_y": (-110.0, 80.0), "centre": (-3.0, -5.0), "semi": (30.0, 75.0)}
DIAPHRAGM = {"apex": (-20.0, 10.0), "curvature": 260.0, "liver_x_max": 22.0}  # dome z = dia_z - r^2 / curvature
STERNUM = {"depth_in_muscle": 0.6, "box_half": (20.0, 10.0), "semi": (13.0, 6.5), "marrow": 0.45}
SPINE = {  # y relative to the subject's spine_y; "marrow" is a squared normalised radius
    "box_x": (-30.0, 30.0), "box_y": (-25.0, 70.0), "body_semi": (19.0, 16.0), "marrow": 0.72,
    "disc_period": 27.0, "disc_thickness": 6.0, "disc_phase": 3.1,  # disc phase: z offset per mm of dia_z
    "canal_y": 29.0, "canal_r": 9.0, "arch_r": 17.0, "arch_y_min": 14.0,
    "process_half_width": 5.0, "process_y": (40.0, 62.0),
}
DESCENDING_AORTA = {  # knots of its centre line, offsets from the subject's da_xy; fat and wall bands outside
    "knots_z": (-200.0, -60.0, 0.0, 60.0, 200.0),
    "knots_dx": (2.0, 1.0, 0.0, -1.5, -4.0),
    "knots_dy": (-4.0, -2.0, 0.0, 1.0, 2.0),
    "box_margin": 8.0, "fat": 5.0, "wall": 1.8,
}
OESOPHAGUS = {"x": 4.0, "y": 50.0, "r": 7.0, "box_x": (-10.0, 18.0), "box_y": (38.0, 62.0)}

# ----------------------------------------------------------------------------------------------------------------
# heart (canonical heart frame)
# ----------------------------------------------------------------------------------------------------------------

HEART_CENTRE = (12.0, 0.0, -5.0)  # world point the subject's scale and rotation act about
LEFT_VENTRICLE = {
    "axis": (0.50, -0.45, -0.74),  # long axis from base to apex, before the subject's tilt
    "frame_hint": (0.0, 1.0, 0.0),  # second axis of its frame: about posterior
    "base": (4.0, 8.0, 16.0),  # centre of the base (mitral plane)
    "centre_below_base": 0.6,  # cavity centre, in cavity long semi-axes
    "apex_wall": 0.8,  # myocardium at the apex, in myocardial thicknesses
    "basal_cap": 0.6,  # myocardium above the base plane, in myocardial thicknesses
}
RIGHT_HEART = {
    "rv_direction": (-0.75, -0.65, 0.1),  # anterior-right of the LV, made orthogonal to its axis
    "rv_centre_below_base": 0.5,  # in LV cavity long semi-axes
    "rv_overlap": 7.0,  # how far the RV reaches into the LV wall's outer surface
    "ra_offset": (-40.0, 2.0, 10.0),  # from the LV base
    "ra_axis": (0.0, 0.0, 1.0), "ra_hint": (1.0, 0.2, 0.0),
}
LEFT_ATRIUM = {"above_base": 0.8, "posterior": 12.0, "mitral_gap": 3.0}  # above_base: in LA long semi-axes
ASCENDING_AORTA = {
    "valve_below_base": 5.0, "valve_offset": 11.0, "valve_direction": (-0.6, -1.0, 0.0),
    "root_length": 14.0,  # straight segment below the valve, inside the LV outflow
    "sinus_length": 14.0, "sinus_extra_r": 2.0,  # the wider aortic root around the valve
}
PULMONARY_ARTERY = {  # trunk from the RV outflow to its bifurcation, then the two branches
    "root_offset": (14.0, -16.0, 4.0),  # from the aortic valve
    "outflow": 12.0,  # the trunk starts this far up the LV axis from its root
    "bend": (6.0, -6.0, 26.0), "top": (12.0, 32.0, 40.0),  # from the root
    "left": ((18.0, 10.0, 2.0), (34.0, 24.0, -8.0)), "right": ((-20.0, 10.0, 0.0), (-62.0, 12.0, -6.0)),
    "branch_r": 0.75,  # branch radius, in trunk radii
}
PULMONARY_VEINS = {"heights": (-7.0, 8.0), "lateral": 0.5, "run": (30.0, 14.0), "rise": 0.8, "r": 5.5}
VENAE_CAVAE = {  # start and end of each, offsets from the RA centre
    "svc": ((3.0, -2.0, 8.0), (8.0, 2.0, 110.0)),
    "ivc": ((4.0, 8.0, -8.0), (10.0, 18.0, -110.0)),
}
FIELD_PAD = 4.0  # distance fields reach this far beyond the epicardial fat
EPICARDIAL_FAT = (  # fat beyond the subject's epi_fat around each structure, painted in this order
    ("lv_out", 0.0), ("rv", 2.5), ("ra", 2.5), ("la", 2.5), ("aa", 2.5), ("pa", 2.5),
)
WALLS = (  # name, wall thickness, wall structure, lumen structure; lumens are painted in this order
    ("ra", 2.5, S_HWALL, S_BLOOD),
    ("rv", 3.0, S_HWALL, S_BLOOD),
    ("svc", 2.0, S_SOFT, S_BLOOD),
    ("ivc", 2.0, S_SOFT, S_BLOOD),
    ("pa", 2.5, S_SOFT, S_BLOOD),
    ("pv", 1.5, S_SOFT, S_BLOOD),
    ("la", 2.5, S_HWALL, S_LAC),
    ("aa", 2.5, S_SOFT, S_AA),
)
JOINED = (("ra", "rv"), ("ra", "svc"), ("ra", "ivc"), ("rv", "pa"), ("la", "pv"))  # lumens open onto each other

# ----------------------------------------------------------------------------------------------------------------
# imaging
# ----------------------------------------------------------------------------------------------------------------

MR_IMAGING = {
    "mean_jitter": (0.85, 1.15),  # per-subject factor on each tissue mean except air
    "blur": (1.0, 1.0, 0.0), "blur_truncate": 3.0,  # in-plane partial-volume blur (fine-grid voxels)
    "bias_controls": (3, 3, 3), "bias": (0.2, 0.4),  # log-amplitude of the multiplicative bias field
    "noise": (0.03, 0.05),  # Rician noise sd, as a share of the subject's blood mean
}
CT_IMAGING = {
    "mean_sd": 12.0,  # per-subject offset of each tissue mean except blood and air
    "blood_jitter": (0.92, 1.08),  # per-subject factor on the contrast-enhanced blood (bolus timing, dose)
    "noise": (45.0, 75.0),  # Gaussian noise sd in HU
    "blur": 0.6, "blur_truncate": 3.0,  # isotropic blur (voxels), which also correlates the noise
}
