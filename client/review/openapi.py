"""The review app's JSON API as an OpenAPI 3.1 document (served at `api/openapi.json`), for
programs other than the page: a QuPath script, 3D Slicer, a DSA plug-in. They authenticate with an
API token (`ugafl review add-token`, `Authorization: Bearer TOKEN`) and then need no page token;
the page itself uses its session (or the hospital's proxy) and the page token. Coordinates: an
item's box is in level-0 pixels of its slide (x right, y down); its pictures are the patch's grid
at `mpp` µm/px; a mask is a greyscale PNG of that grid, 0 = background, 255 (or 1) = tumour.
`tests/test_review_api.py` checks that every route the app serves is described here."""

from __future__ import annotations

from ugafl.client.review.service import REJECT_REASONS

_ERROR = {"description": "refused; nothing changed", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_TAB = {"type": "string", "pattern": "^[A-Za-z0-9]{8,64}$",
        "description": "the client's own id for its work session (a browser tab); it holds the item it opened"}


def _post(summary: str, properties: dict, required: list[str], answer: str) -> dict:
    return {"post": {"summary": summary, "requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "properties": {"token": {"type": "string", "description": "the page token (not with an API token)"},
                                         **properties}, "required": required}}}},
        "responses": {"200": {"description": answer, "content": {"application/json": {"schema": {"type": "object"}}}},
                      "400": _ERROR, "401": _ERROR, "403": _ERROR, "404": _ERROR, "409": _ERROR, "413": _ERROR}}}


def _get(summary: str, media: str, schema: dict | None = None) -> dict:
    content = {media: {"schema": schema or {"type": "string", "format": "binary"}}}
    return {"get": {"summary": summary, "responses": {"200": {"description": summary, "content": content},
                                                      "401": _ERROR, "404": _ERROR}}}


def openapi(prefix: str = "") -> dict:
    """The document; `prefix` is the path the app is served under."""
    item_id = {"name": "item_id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}
    paths = {
        "/api/me": _get("who the request is signed in as, and the sign-in mode", "application/json",
                        {"type": "object", "properties": {"user": {"type": "string"}, "auth": {"type": "string"}}}),
        "/api/progress": _get("items per state, and per reviewer how many they corrected and rejected", "application/json",
                              {"$ref": "#/components/schemas/Progress"}),
        "/api/next": _post("open the next item for this client (highest score first; the one it holds, if any)",
                           {"tab": _TAB}, ["tab"], "{item: Item or null, progress}"),
        "/api/items/{item_id}": _get("one item", "application/json", {"$ref": "#/components/schemas/Item"}),
        "/api/items/{item_id}/image.png": _get("the patch, RGB, at the item's mpp", "image/png"),
        "/api/items/{item_id}/model_mask.png": _get("the model's mask, greyscale 0/255", "image/png"),
        "/api/items/{item_id}/uncertainty.png": _get("the uncertainty map, coloured", "image/png"),
        "/api/items/{item_id}/claim": _post("start correcting the item this client holds (pending -> in review)",
                                            {"tab": _TAB}, ["tab"], "{progress}"),
        "/api/items/{item_id}/correction": _post(
            "save the corrected mask (pending or in review -> corrected)",
            {"tab": _TAB, "mask_png": {"type": "string", "contentEncoding": "base64",
                                       "description": "greyscale PNG of the patch's size, 0/255 or 0/1"}},
            ["tab", "mask_png"], "{progress}"),
        "/api/items/{item_id}/reject": _post(
            "the item cannot be annotated (-> rejected)",
            {"tab": _TAB, "reason": {"type": "string", "maxLength": 500, "examples": list(REJECT_REASONS)}},
            ["tab", "reason"], "{progress}"),
        "/api/items/{item_id}/skip": _post("give the item back and pass over it in this client", {"tab": _TAB}, ["tab"],
                                           "{progress}"),
        "/api/slides/{name}": _get("the Deep Zoom descriptor of a queued slide (name: <slide>.dzi), level-0 frame",
                                   "application/xml"),
        "/api/slides/{stem}_files/{level}/{tile}": _get("one Deep Zoom tile (tile: <col>_<row>.jpeg)", "image/jpeg"),
        "/api/login": _post("sign in with a built-in account (auth = accounts): sets the session cookie",
                            {"user": {"type": "string"}, "password": {"type": "string", "format": "password"}},
                            ["token", "user", "password"], "{user}"),
        "/api/logout": _post("end this browser's session", {}, [], "{user: null}"),
        "/api/openapi.json": _get("this document", "application/json", {"type": "object"}),
    }
    for path, operations in paths.items():
        for operation in operations.values():
            params = [item_id] if "{item_id}" in path else []
            params += [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                       for n in ("name", "stem", "level", "tile") if "{" + n + "}" in path]
            if params:
                operation["parameters"] = params
    return {
        "openapi": "3.1.0",
        "info": {"title": "ugafl review", "version": "1",
                 "description": __doc__},
        "servers": [{"url": prefix or "/"}],
        "security": [{"apiToken": []}, {"session": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "apiToken": {"type": "http", "scheme": "bearer", "description": "`ugafl review add-token`"},
                "session": {"type": "apiKey", "in": "cookie", "name": "ugafl_session"},
            },
            "schemas": {
                "Error": {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]},
                "Progress": {"type": "object", "properties": {
                    **{k: {"type": "integer"} for k in ("pending", "in_review", "corrected", "rejected", "done", "total")},
                    "by": {"type": "object", "additionalProperties": {"type": "object"}}}},
                "Item": {"type": "object", "properties": {
                    "id": {"type": "integer"}, "slide": {"type": "string"},
                    "x": {"type": "integer", "description": "level-0 px"}, "y": {"type": "integer", "description": "level-0 px"},
                    "box_width": {"type": "integer"}, "box_height": {"type": "integer"},
                    "width": {"type": "integer", "description": "patch px"}, "height": {"type": "integer"},
                    "mpp": {"type": "number", "description": "µm per patch px"}, "score": {"type": "number"},
                    "measure": {"type": "string"}, "selection": {"type": "string"}, "state": {"type": "string"},
                    "reviewer": {"type": ["string", "null"]}, "slide_dzi": {"type": ["string", "null"]}}},
            },
        },
    }
