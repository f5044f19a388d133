"""What edge-map writes from the registry: GeoJSON (RFC 7946), CSV, a self-contained map.html, and Open311
(GeoReport v2) service requests."""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
from pathlib import Path
from typing import Any

from pothole_edge import csvcells
from pothole_edge.fileio import write_text
from pothole_edge.redact import redacted

ASSETS = Path(__file__).with_name("assets")
FIELDS = (
    "id",
    "lat",
    "lon",
    "sightings",
    "first_seen",
    "last_seen",
    "max_prob",
    "possibly_repaired",
    "best_snapshot",
    "runs",
)


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def properties(p: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": p["id"],
        "sightings": p["sightings"],
        "first_seen": _iso(p["first_seen"]),
        "last_seen": _iso(p["last_seen"]),
        "max_prob": round(p["max_prob"], 4),
        "possibly_repaired": bool(p["possibly_repaired"]),
        "best_snapshot": p["best_snapshot"],
        "runs": p["runs"],
    }


def geojson(potholes: list[dict[str, Any]]) -> dict[str, Any]:
    """A FeatureCollection of Points; RFC 7946 orders coordinates longitude first, in WGS 84."""
    features = [
        {
            "type": "Feature",
            "id": p["id"],
            "geometry": {"type": "Point", "coordinates": [round(p["lon"], 7), round(p["lat"], 7)]},
            "properties": properties(p),
        }
        for p in potholes
    ]
    return {"type": "FeatureCollection", "features": features}


def csv_text(potholes: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csvcells.writer(buf)
    writer.writerow(FIELDS)
    for p in potholes:
        props = properties(p)
        writer.writerow(
            [
                p["id"],
                f"{p['lat']:.7f}",
                f"{p['lon']:.7f}",
                props["sightings"],
                props["first_seen"],
                props["last_seen"],
                props["max_prob"],
                props["possibly_repaired"],
                props["best_snapshot"] or "",
                ";".join(props["runs"]),
            ]
        )
    return buf.getvalue()


def open311(potholes: list[dict[str, Any]], service_code: str) -> list[dict[str, Any]]:
    """GeoReport v2 service requests, one per pothole not marked repaired, ready to POST to /requests.json."""
    return [
        {
            "service_code": service_code,
            "lat": round(p["lat"], 7),
            "long": round(p["lon"], 7),
            "description": (
                f"Pothole seen {p['sightings']} time(s) by a vehicle camera, first {_iso(p['first_seen'])}, "
                f"last {_iso(p['last_seen'])}; highest probability {p['max_prob']:.2f}."
            ),
            "requested_datetime": _iso(p["first_seen"]),
            "attribute[pothole_edge_id]": p["id"],
        }
        for p in potholes
        if not p["possibly_repaired"]
    ]


def _thumbnail(path: str | None, base: Path, side: int = 240) -> str | None:
    """The snapshot as a small inline JPEG, so the map needs no other file. A snapshot is untrusted: the image
    limits of the edge apply (a regular file, 256 MB, 64 megapixels), and one that fails them is left out."""
    if not path:
        return None
    import cv2

    from pothole_edge.images import ImageDecodeError, read_rgb

    try:
        image = read_rgb(base / path)[:, :, ::-1]
    except (ImageDecodeError, OSError, ValueError):
        return None
    scale = side / max(image.shape[:2])
    if scale < 1:
        image = cv2.resize(
            image, (int(image.shape[1] * scale), int(image.shape[0] * scale)), interpolation=cv2.INTER_AREA
        )
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
    return "data:image/jpeg;base64," + base64.b64encode(data.tobytes()).decode() if ok else None


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Potholes</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{css}</style>
<style>
html, body, #map {{ height: 100%; margin: 0; }}
.legend {{ background: white; padding: 6px 8px; font: 13px sans-serif; }}
</style>
</head><body><div id="map"></div>
<script>{js}</script>
<script>
const data = {data};
const map = L.map("map", {{ preferCanvas: false }});
// a base map where tiles are reachable; markers and tracks need no network
const tiles = L.tileLayer("https://tile.openstreetmap.org/{{z}}/{{x}}/{{y}}.png", {{
  maxZoom: 19, attribution: "&copy; OpenStreetMap contributors"
}});
tiles.on("tileerror", () => map.removeLayer(tiles));
tiles.addTo(map);
const bounds = [];
for (const track of data.tracks) {{
  if (track.points.length > 1) {{
    L.polyline(track.points, {{ color: "#3366cc", weight: 3, opacity: 0.6 }}).addTo(map);
  }}
  bounds.push(...track.points);
}}
window.potholeMarkers = [];
for (const p of data.potholes) {{
  const colour = p.possibly_repaired ? "#888888" : "#d62728";
  const marker = L.circleMarker([p.lat, p.lon], {{
    radius: 7, color: colour, fillColor: colour, fillOpacity: 0.8, potholeId: p.id
  }});
  marker.bindPopup(p.popup);
  marker.addTo(map);
  window.potholeMarkers.push(marker);
  bounds.push([p.lat, p.lon]);
}}
if (bounds.length) {{ map.fitBounds(bounds, {{ padding: [30, 30], maxZoom: 18 }}); }} else {{ map.setView([0, 0], 2); }}
const legend = L.control({{ position: "topright" }});
legend.onAdd = () => {{
  const d = L.DomUtil.create("div", "legend");
  d.innerHTML = `${{data.potholes.length}} potholes, ${{data.tracks.length}} drives`;
  return d;
}};
legend.addTo(map);
</script></body></html>
"""


def popup(p: dict[str, Any], base: Path) -> str:
    props = properties(p)
    rows = [
        f"<b>Pothole {p['id']}</b>{' (possibly repaired)' if props['possibly_repaired'] else ''}",
        f"seen {props['sightings']} time(s)",
        f"first {html.escape(props['first_seen'])}<br>last {html.escape(props['last_seen'])}",
        f"highest probability {props['max_prob']:.2f}",
    ]
    thumb = _thumbnail(p["best_snapshot"], base)
    if thumb:
        rows.append(f'<img src="{thumb}" width="240" alt="snapshot">')
    return "<br>".join(rows)


def map_html(potholes: list[dict[str, Any]], tracks: list[dict[str, Any]], base: Path) -> str:
    """A self-contained page: markers, tracks and snapshot thumbnails inline, no server needed."""
    data = {
        "potholes": [
            {
                "id": p["id"],
                "lat": p["lat"],
                "lon": p["lon"],
                "possibly_repaired": bool(p["possibly_repaired"]),
                "popup": popup(p, base),
            }
            for p in potholes
        ],
        "tracks": tracks,
    }
    blob = script_json(data)
    return PAGE.format(
        css=(ASSETS / "leaflet.css").read_text(encoding="utf-8"),
        js=(ASSETS / "leaflet.js").read_text(encoding="utf-8"),
        data=blob,
    )


_SCRIPT_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def script_json(value: Any) -> str:
    """JSON safe inside a <script> element: `</script>`, `<!--` and `]]>` in a name cannot end or hide the script,
    and U+2028/2029 cannot end a line of it. JSON's \\u escapes read back as the same text."""
    text = json.dumps(value, ensure_ascii=False)
    return "".join(_SCRIPT_ESCAPES.get(c, c) for c in text)


def write_all(out: Path, potholes: list[dict[str, Any]], tracks: list[dict[str, Any]], service_code: str) -> None:
    """Every file is made before any is written, so a failure leaves the last build's set whole."""
    made = {
        "potholes.geojson": json.dumps(redacted(geojson(potholes)), indent=2) + "\n",
        "potholes.csv": csv_text(potholes),
        "open311.json": json.dumps(redacted(open311(potholes, service_code)), indent=2) + "\n",
        "map.html": map_html(potholes, tracks, out),
    }
    for name, text in made.items():
        write_text(out / name, text)


LIVE_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Potholes: live</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="leaflet.css">
<style>
html, body, #map { height: 100%; margin: 0; }
.legend { background: white; padding: 6px 8px; font: 13px sans-serif; }
</style>
</head><body><div id="map"></div>
<script src="leaflet.js"></script>
<script>
const REFRESH_MS = __REFRESH_MS__;
const map = L.map("map");
const tiles = L.tileLayer("https://tile.openstreetmap.org/{z}/{x}/{y}.png", {
  maxZoom: 19, attribution: "&copy; OpenStreetMap contributors"
});
tiles.on("tileerror", () => map.removeLayer(tiles));
tiles.addTo(map);
map.setView([0, 0], 2);
const markers = L.layerGroup().addTo(map);
const lines = L.layerGroup().addTo(map);
const legend = L.control({ position: "topright" });
legend.onAdd = () => L.DomUtil.create("div", "legend");
legend.addTo(map);
window.potholeMarkers = [];
let version = -1, fitted = false;

// built from DOM nodes and text, never HTML strings: names in the data cannot become markup
function popup(props) {
  const div = document.createElement("div");
  const title = document.createElement("b");
  title.textContent = `Pothole ${props.id}` + (props.possibly_repaired ? " (possibly repaired)" : "");
  div.append(title);
  for (const line of [`seen ${props.sightings} time(s)`, `first ${props.first_seen}`, `last ${props.last_seen}`,
                      `highest probability ${Number(props.max_prob).toFixed(2)}`]) {
    div.append(document.createElement("br"), document.createTextNode(line));
  }
  if (/^snapshots\\/[0-9a-f-]{36}\\.jpg$/.test(props.best_snapshot || "")) {
    const img = document.createElement("img");
    img.src = props.best_snapshot; img.width = 240; img.alt = "snapshot";
    div.append(document.createElement("br"), img);
  }
  return div;
}

async function redraw() {
  const [geo, tracks] = await Promise.all([
    fetch("potholes.geojson", { cache: "no-store" }).then(r => r.json()),
    fetch("tracks.json", { cache: "no-store" }).then(r => r.json()),
  ]);
  markers.clearLayers(); lines.clearLayers();
  const bounds = [];
  for (const t of tracks) {
    if (t.points.length > 1) L.polyline(t.points, { color: "#3366cc", weight: 3, opacity: 0.6 }).addTo(lines);
    bounds.push(...t.points);
  }
  window.potholeMarkers = [];
  for (const f of geo.features) {
    const [lon, lat] = f.geometry.coordinates, p = f.properties;
    const colour = p.possibly_repaired ? "#888888" : "#d62728";
    const m = L.circleMarker([lat, lon], { radius: 7, color: colour, fillColor: colour, fillOpacity: 0.8,
                                           potholeId: p.id });
    m.bindPopup(() => popup(p));
    m.addTo(markers);
    window.potholeMarkers.push(m);
    bounds.push([lat, lon]);
  }
  legend.getContainer().textContent = `${geo.features.length} potholes, ${tracks.length} drives (live)`;
  if (!fitted && bounds.length) { map.fitBounds(bounds, { padding: [30, 30], maxZoom: 18 }); fitted = true; }
}

async function poll() {
  try {
    const now = (await fetch("version", { cache: "no-store" }).then(r => r.json())).version;
    if (now !== version) { version = now; await redraw(); }
  } catch (e) { /* the office restarts or the network drops: the next poll tries again */ }
  setTimeout(poll, REFRESH_MS);
}
poll();
</script></body></html>
"""


def live_page(refresh_s: float) -> str:
    """The map the office serves: it loads its data from the office and redraws when the registry changed."""
    return LIVE_PAGE.replace("__REFRESH_MS__", str(max(100, round(refresh_s * 1000))))
