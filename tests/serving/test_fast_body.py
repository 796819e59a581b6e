"""The fast path reads the request body itself (serving/fastpath.py): a body that arrives in pieces
is answered as the same body in one piece; a client that goes away mid-body gets no answer and
leaves the gateway serving, with nothing logged as an error."""

from __future__ import annotations

import json
import socket
import time

import httpx

from tests.serving.gateway_proc import Gateway

BODY = json.dumps({"data": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}).encode()
PATH = "/v1/models/iris/predict"


def head(gateway: Gateway, length: int) -> bytes:
    return (
        f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{gateway.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def read_answer(sock: socket.socket) -> tuple[int, dict]:  # type: ignore[type-arg]
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    header, rest = data.split(b"\r\n\r\n", 1)
    lines = header.decode().split("\r\n")
    length = next(int(v) for k, v in (h.split(": ", 1) for h in lines[1:]) if k.lower() == "content-length")
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk
        rest += chunk
    return int(lines[0].split()[1]), json.loads(rest[:length])


def results(answer: dict) -> list:  # type: ignore[type-arg]
    return [(r["index"], r["probabilities"]) for r in answer["results"]]


def test_a_body_in_pieces_gets_the_answer_of_the_whole_body(gateway: Gateway) -> None:
    whole = httpx.post(gateway.url + PATH, content=BODY, headers={"content-type": "application/json"})
    assert whole.status_code == 200, whole.text
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(head(gateway, len(BODY)))
        time.sleep(0.1)  # the headers alone: the request starts, its body is not there yet
        for i in range(0, len(BODY), 7):
            sock.sendall(BODY[i : i + 7])
            time.sleep(0.005)
        status, answer = read_answer(sock)
        assert status == 200, answer
        assert results(answer) == results(whole.json())
        sock.sendall(head(gateway, len(BODY)) + BODY)  # the same connection serves on
        status, again = read_answer(sock)
        assert status == 200 and results(again) == results(whole.json())


def test_a_client_gone_mid_body_gets_nothing_and_the_gateway_serves_on(gateway: Gateway) -> None:
    before = gateway.logs()
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
            sock.sendall(head(gateway, len(BODY)) + BODY[: len(BODY) // 2])
            time.sleep(0.05)
    r = httpx.post(gateway.url + PATH, content=BODY, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    time.sleep(0.2)
    new = gateway.logs()[len(before) :]
    assert "Traceback" not in new and "unexpected error" not in new and "ERROR" not in new, new
