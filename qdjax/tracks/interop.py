"""Tracks for other programs: napari's Tracks layer and Fiji's TrackMate.

    data, properties = interop.to_napari(tracks)
    viewer.add_tracks(data, properties=properties, name="QDs")   # napari

    interop.write_trackmate_xml(tracks, "movie_trackmate.xml", pixel_size_um=0.1,
                                frame_interval_s=0.03, image_path="movie.tif")
    # Fiji: Plugins > Tracking > Load a TrackMate file

``tracks`` is what ``tracking.track_movie`` returns and ``track.py`` writes: columns
frame, x, y (px; the centre of pixel (row 0, column 0) is (0, 0), x = column), score and
particle. napari and TrackMate put pixel centres at the same integer coordinates, so no
half-pixel shift is needed.
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd

from qdjax import io

NAPARI_COLUMNS = ["track_id", "t", "y", "x"]
# TrackMate's XML keys, as TrackMate names them (fiji.plugin.trackmate.io.TmXmlKeys and the
# feature names of its spot, edge and track analysers).
TRACKMATE_VERSION = "7.13.2"  # the file format this writer follows (read by TrackMate >= 7)
SPOT_FEATURES = [
  # feature, name, short name, dimension, is an integer
  ("QUALITY", "Quality", "Quality", "QUALITY", False),
  ("POSITION_X", "X", "X", "POSITION", False),
  ("POSITION_Y", "Y", "Y", "POSITION", False),
  ("POSITION_Z", "Z", "Z", "POSITION", False),
  ("POSITION_T", "T", "T", "TIME", False),
  ("FRAME", "Frame", "Frame", "NONE", True),
  ("RADIUS", "Radius", "R", "LENGTH", False),
  ("VISIBILITY", "Visibility", "Visibility", "NONE", True),
]
EDGE_FEATURES = [
  ("SPOT_SOURCE_ID", "Source spot ID", "Source ID", "NONE", True),
  ("SPOT_TARGET_ID", "Target spot ID", "Target ID", "NONE", True),
  ("LINK_COST", "Edge cost", "Cost", "COST", False),
  ("SPEED", "Speed", "Speed", "VELOCITY", False),
  ("DISPLACEMENT", "Displacement", "Disp.", "LENGTH", False),
  ("EDGE_TIME", "Edge time", "Edge T", "TIME", False),
  ("EDGE_X_LOCATION", "Edge X", "Edge X", "POSITION", False),
  ("EDGE_Y_LOCATION", "Edge Y", "Edge Y", "POSITION", False),
  ("EDGE_Z_LOCATION", "Edge Z", "Edge Z", "POSITION", False),
]
TRACK_FEATURES = [
  ("TRACK_INDEX", "Track index", "Index", "NONE", True),
  ("TRACK_ID", "Track ID", "ID", "NONE", True),
  ("NUMBER_SPOTS", "Number of spots in track", "N spots", "NONE", True),
  ("NUMBER_GAPS", "Number of gaps", "N gaps", "NONE", True),
  ("LONGEST_GAP", "Longest gap", "Lgst gap", "NONE", True),
  ("TRACK_DURATION", "Track duration", "Duration", "TIME", False),
  ("TRACK_START", "Track start", "Track start", "TIME", False),
  ("TRACK_STOP", "Track stop", "Track stop", "TIME", False),
  ("TRACK_DISPLACEMENT", "Track displacement", "Track disp.", "LENGTH", False),
  ("TRACK_X_LOCATION", "Track mean X", "Track X", "POSITION", False),
  ("TRACK_Y_LOCATION", "Track mean Y", "Track Y", "POSITION", False),
  ("TRACK_Z_LOCATION", "Track mean Z", "Track Z", "POSITION", False),
  ("TRACK_MEAN_QUALITY", "Track mean quality", "Mean Q", "QUALITY", False),
]


def _check_tracks(tracks: pd.DataFrame) -> pd.DataFrame:
  missing = {"frame", "x", "y", "particle"} - set(tracks.columns)
  if missing:
    raise ValueError(f"tracks need columns frame, x, y, particle; missing {sorted(missing)}")
  return tracks.sort_values(["particle", "frame"], kind="stable").reset_index(drop=True)


def to_napari(tracks: pd.DataFrame) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """Tracks as napari's Tracks layer takes them.

  Args:
    tracks: frame, x, y, particle (and optionally score) per detection.

  Returns:
    data: [N, 4] float, rows (track_id, t, y, x), sorted by track then frame, in px and
      frames (napari's axis order: time, row, column).
    properties: per row, {'score': [N], 'frame': [N]} ('score' only when given), for
      colouring: ``viewer.add_tracks(data, properties=properties, color_by='score')``.
  """
  tracks = _check_tracks(tracks)
  data = np.column_stack([tracks["particle"], tracks["frame"], tracks["y"], tracks["x"]]).astype(
    np.float64
  )
  properties = {"frame": tracks["frame"].to_numpy(np.int64)}
  if "score" in tracks:
    properties["score"] = tracks["score"].to_numpy(np.float64)
  return data, properties


def write_napari_csv(tracks: pd.DataFrame, path: str | os.PathLike) -> None:
  """Writes ``track_id,t,y,x`` (``to_napari``'s data) as CSV, atomically.

  Read it back into napari with
  ``viewer.add_tracks(pandas.read_csv(path)[["track_id", "t", "y", "x"]].to_numpy())``.
  """
  data, _ = to_napari(tracks)
  table = pd.DataFrame(data, columns=NAPARI_COLUMNS)
  table[["track_id", "t"]] = table[["track_id", "t"]].astype(np.int64)
  io.write_csv(path, table, {"y": "%.4f", "x": "%.4f"})


def _number(value: float) -> str:
  if isinstance(value, (int, np.integer)):
    return str(int(value))
  return repr(float(value)) if math.isfinite(value) else "NaN"


def _declare(parent: ET.Element, tag: str, features) -> None:
  element = ET.SubElement(parent, tag)
  for feature, name, short, dimension, is_int in features:
    ET.SubElement(
      element,
      "Feature",
      feature=feature,
      name=name,
      shortname=short,
      dimension=dimension,
      isint="true" if is_int else "false",
    )


def trackmate_tree(
  tracks: pd.DataFrame,
  pixel_size_um: float,
  frame_interval_s: float,
  *,
  radius_um: float | None = None,
  image_path: str | os.PathLike | None = None,
  image_shape: tuple[int, int, int] | None = None,
) -> ET.ElementTree:
  """The TrackMate XML document of ``tracks`` (see ``write_trackmate_xml``)."""
  if not (pixel_size_um > 0 and frame_interval_s > 0):
    raise ValueError(
      f"pixel_size_um and frame_interval_s must be positive, got {pixel_size_um}, "
      f"{frame_interval_s}"
    )
  tracks = _check_tracks(tracks)
  radius_um = 2 * pixel_size_um if radius_um is None else float(radius_um)
  frames = tracks["frame"].to_numpy(np.int64)
  x_um = tracks["x"].to_numpy(np.float64) * pixel_size_um
  y_um = tracks["y"].to_numpy(np.float64) * pixel_size_um
  quality = tracks["score"].to_numpy(np.float64) if "score" in tracks else np.ones(len(tracks))
  spot_ids = np.arange(len(tracks))

  root = ET.Element("TrackMate", version=TRACKMATE_VERSION)
  log = "Tracks written by qdjax (qdjax.tracks.interop.write_trackmate_xml)."
  ET.SubElement(root, "Log").text = log
  # TrackMate's own units, as ImageJ names a calibration in um and s.
  model = ET.SubElement(root, "Model", spatialunits="micron", timeunits="sec")
  declarations = ET.SubElement(model, "FeatureDeclarations")
  _declare(declarations, "SpotFeatures", SPOT_FEATURES)
  _declare(declarations, "EdgeFeatures", EDGE_FEATURES)
  _declare(declarations, "TrackFeatures", TRACK_FEATURES)

  all_spots = ET.SubElement(model, "AllSpots", nspots=str(len(tracks)))
  for frame in np.unique(frames):
    in_frame = ET.SubElement(all_spots, "SpotsInFrame", frame=str(int(frame)))
    for i in np.flatnonzero(frames == frame):
      ET.SubElement(
        in_frame,
        "Spot",
        ID=str(int(spot_ids[i])),
        name=f"ID{int(spot_ids[i])}",
        QUALITY=_number(quality[i]),
        POSITION_X=_number(x_um[i]),
        POSITION_Y=_number(y_um[i]),
        POSITION_Z="0.0",
        POSITION_T=_number(frames[i] * frame_interval_s),
        FRAME=str(int(frames[i])),
        RADIUS=_number(radius_um),
        VISIBILITY="1",
      )

  all_tracks = ET.SubElement(model, "AllTracks")
  filtered = []
  particles = tracks["particle"].to_numpy()
  starts = np.flatnonzero(np.r_[True, particles[1:] != particles[:-1]])
  ends = np.r_[starts[1:], len(tracks)]
  for index, (start, end) in enumerate(zip(starts, ends, strict=True)):
    if end - start < 2:  # a lone spot is no TrackMate track (a track is a set of edges)
      continue
    rows = np.arange(start, end)
    track_id = int(particles[start])
    steps = np.diff(frames[rows])
    track = ET.SubElement(
      all_tracks,
      "Track",
      name=f"Track_{track_id}",
      TRACK_INDEX=str(index),
      TRACK_ID=str(track_id),
      NUMBER_SPOTS=str(len(rows)),
      NUMBER_GAPS=str(int((steps > 1).sum())),
      LONGEST_GAP=str(int(max(steps.max() - 1, 0))),
      TRACK_DURATION=_number((frames[rows[-1]] - frames[rows[0]]) * frame_interval_s),
      TRACK_START=_number(frames[rows[0]] * frame_interval_s),
      TRACK_STOP=_number(frames[rows[-1]] * frame_interval_s),
      TRACK_DISPLACEMENT=_number(
        math.hypot(x_um[rows[-1]] - x_um[rows[0]], y_um[rows[-1]] - y_um[rows[0]])
      ),
      TRACK_X_LOCATION=_number(x_um[rows].mean()),
      TRACK_Y_LOCATION=_number(y_um[rows].mean()),
      TRACK_Z_LOCATION="0.0",
      TRACK_MEAN_QUALITY=_number(quality[rows].mean()),
    )
    for source, target in zip(rows[:-1], rows[1:], strict=True):
      displacement = math.hypot(x_um[target] - x_um[source], y_um[target] - y_um[source])
      elapsed = (frames[target] - frames[source]) * frame_interval_s
      ET.SubElement(
        track,
        "Edge",
        SPOT_SOURCE_ID=str(int(spot_ids[source])),
        SPOT_TARGET_ID=str(int(spot_ids[target])),
        LINK_COST="0.0",
        SPEED=_number(displacement / elapsed),
        DISPLACEMENT=_number(displacement),
        EDGE_TIME=_number((frames[source] + frames[target]) / 2 * frame_interval_s),
        EDGE_X_LOCATION=_number((x_um[source] + x_um[target]) / 2),
        EDGE_Y_LOCATION=_number((y_um[source] + y_um[target]) / 2),
        EDGE_Z_LOCATION="0.0",
      )
    filtered.append(track_id)
  filtered_tracks = ET.SubElement(model, "FilteredTracks")
  for track_id in filtered:
    ET.SubElement(filtered_tracks, "TrackID", TRACK_ID=str(track_id))

  settings = ET.SubElement(root, "Settings")
  if image_shape is None:
    n_frames = int(frames.max()) + 1 if len(frames) else 1
    height = int(math.ceil(tracks["y"].max())) + 1 if len(tracks) else 1
    width = int(math.ceil(tracks["x"].max())) + 1 if len(tracks) else 1
  else:
    n_frames, height, width = (int(v) for v in image_shape)
  image = Path(image_path).resolve() if image_path is not None else None
  ET.SubElement(
    settings,
    "ImageData",
    filename=image.name if image else "",
    folder=(str(image.parent) + os.sep) if image else "",
    width=str(width),
    height=str(height),
    nslices="1",
    nframes=str(n_frames),
    pixelwidth=_number(pixel_size_um),
    pixelheight=_number(pixel_size_um),
    voxeldepth="1.0",
    timeinterval=_number(frame_interval_s),
  )
  ET.SubElement(
    settings,
    "BasicSettings",
    xstart="0",
    xend=str(width - 1),
    ystart="0",
    yend=str(height - 1),
    zstart="0",
    zend="0",
    tstart="0",
    tend=str(n_frames - 1),
  )
  # The tracks were found outside TrackMate: its manual detector and tracker stand for that.
  ET.SubElement(
    settings, "DetectorSettings", DETECTOR_NAME="MANUAL_DETECTOR", RADIUS=_number(radius_um)
  )
  ET.SubElement(settings, "InitialSpotFilter", feature="QUALITY", value="0.0", isabove="true")
  ET.SubElement(settings, "SpotFilterCollection")
  ET.SubElement(settings, "TrackerSettings", TRACKER_NAME="MANUAL_TRACKER")
  ET.SubElement(settings, "TrackFilterCollection")
  # TrackMate adds all its analysers on loading; the elements must be there.
  analyzers = ET.SubElement(settings, "AnalyzerCollection")
  for kind in ("SpotAnalyzers", "EdgeAnalyzers", "TrackAnalyzers"):
    ET.SubElement(analyzers, kind)
  ET.SubElement(root, "GUIState", state="ConfigureViews")
  ET.indent(root, space="  ")
  return ET.ElementTree(root)


def write_trackmate_xml(
  tracks: pd.DataFrame,
  path: str | os.PathLike,
  pixel_size_um: float,
  frame_interval_s: float,
  *,
  radius_um: float | None = None,
  image_path: str | os.PathLike | None = None,
  image_shape: tuple[int, int, int] | None = None,
) -> None:
  """Writes ``tracks`` as a TrackMate XML file (atomically), for Fiji's TrackMate.

  TrackMate's model: every detection a ``Spot`` (ID, FRAME, POSITION_X/Y/Z in um,
  POSITION_T in s, QUALITY = the locator's score, RADIUS, VISIBILITY) in ``AllSpots``,
  grouped by ``SpotsInFrame``; every track a ``Track`` in ``AllTracks`` (its TRACK_ID is
  the particle number) made of ``Edge`` elements (SPOT_SOURCE_ID -> SPOT_TARGET_ID, one per
  pair of consecutive detections, across missed frames); all tracks listed in
  ``FilteredTracks``; feature declarations for all of these; and ``Settings`` naming the
  image, its calibration and TrackMate's manual detector and tracker. Open it in Fiji
  with Plugins > Tracking > Load a TrackMate file (the image is opened from
  ``image_path`` when Fiji can read it; otherwise TrackMate shows the tracks alone).

  Args:
    tracks: frame, x, y (px), particle, optionally score.
    path: the .xml file to write.
    pixel_size_um: um per pixel (TrackMate's positions are calibrated).
    frame_interval_s: seconds between frame starts.
    radius_um: the spots' drawn radius; default two pixels.
    image_path: the movie, named in ``ImageData``.
    image_shape: (frames, height, width) of the movie; default: what the tracks span.
  """
  tree = trackmate_tree(
    tracks,
    pixel_size_um,
    frame_interval_s,
    radius_um=radius_um,
    image_path=image_path,
    image_shape=image_shape,
  )
  with io.atomic_path(path) as tmp:
    tree.write(tmp, encoding="UTF-8", xml_declaration=True)


def read_trackmate_xml(path: str | os.PathLike) -> pd.DataFrame:
  """A TrackMate XML file's tracked spots as frame, x, y (px), score, particle: the
  inverse of ``write_trackmate_xml`` (spots in no track are left out)."""
  root = ET.parse(path).getroot()
  model = root.find("Model")
  image = root.find("Settings/ImageData")
  pixel = float(image.get("pixelwidth", 1.0)) if image is not None else 1.0
  spots = {int(spot.get("ID")): spot for spot in model.iterfind("AllSpots/SpotsInFrame/Spot")}
  rows = []
  for track in model.iterfind("AllTracks/Track"):
    track_id = int(track.get("TRACK_ID"))
    members = set()
    for edge in track.iterfind("Edge"):
      members.update((int(edge.get("SPOT_SOURCE_ID")), int(edge.get("SPOT_TARGET_ID"))))
    for spot_id in sorted(members):
      spot = spots[spot_id]
      rows.append(
        {
          "frame": int(spot.get("FRAME")),
          "x": float(spot.get("POSITION_X")) / pixel,
          "y": float(spot.get("POSITION_Y")) / pixel,
          "score": float(spot.get("QUALITY")),
          "particle": track_id,
        }
      )
  table = pd.DataFrame(rows, columns=["frame", "x", "y", "score", "particle"])
  return table.sort_values(["particle", "frame"]).reset_index(drop=True)
