"""A minimal client of Kubernetes' CRI image service (``runtime.v1.ImageService``), as kubelet and ``crictl``
call it on containerd's socket: ``PullImage`` and ``RemoveImage``, nothing else. ``crictl`` (cri-tools) is not
packaged for Debian bookworm, and the two messages are small enough to encode here by hand (protobuf's wire
format: a field is its number and type as a varint, then a length and the bytes), from
``k8s.io/cri-api/pkg/apis/runtime/v1/api.proto``::

    message ImageSpec { string image = 1; map<string, string> annotations = 2; }
    message PullImageRequest { ImageSpec image = 1; AuthConfig auth = 2; PodSandboxConfig sandbox_config = 3; }
    message PullImageResponse { string image_ref = 1; }
    message RemoveImageRequest { ImageSpec image = 1; }
    message RemoveImageResponse {}
"""

from __future__ import annotations

import grpc

from graftfs.metrics import varint

SERVICE = "/runtime.v1.ImageService/"


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2: strings and messages)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def _image_spec(image: str) -> bytes:
    return _field(1, image.encode())


def _string_field_1(message: bytes) -> str:
    """Field 1 of ``message`` when it is a string (PullImageResponse's ``image_ref``); other fields skipped."""
    pos = 0
    while pos < len(message):
        key, pos = _read_varint(message, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, pos = _read_varint(message, pos)
        elif wire_type == 2:
            length, pos = _read_varint(message, pos)
            if number == 1:
                return message[pos : pos + length].decode()
            pos += length
        else:
            raise ValueError(f"unexpected wire type {wire_type} in a CRI response")
    return ""


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _call(address: str, method: str, request: bytes, timeout: float) -> bytes:
    with grpc.insecure_channel("unix:" + address) as channel:
        call = channel.unary_unary(SERVICE + method, request_serializer=bytes, response_deserializer=bytes)
        response: bytes = call(request, timeout=timeout)
        return response


def pull_image(address: str, image: str, timeout: float = 300) -> str:
    """CRI's PullImage of ``image`` (a reference); returns the image's ID (its config digest)."""
    return _string_field_1(_call(address, "PullImage", _field(1, _image_spec(image)), timeout))


def remove_image(address: str, image: str, timeout: float = 120) -> None:
    """CRI's RemoveImage of ``image`` (an ID or a reference): every reference of that image is removed."""
    _call(address, "RemoveImage", _field(1, _image_spec(image)), timeout)
