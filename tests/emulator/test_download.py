"""File download and the pain.008.001.02 content of exported files."""

from __future__ import annotations

import hashlib
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import httpx
import pytest

from airflow_provider_sepa.emulator.orders import NON_ASCII_NAMES
from airflow_provider_sepa.emulator.sepa_xml import PAIN_008_NAMESPACE, iban_is_valid, summarize_pain008
from airflow_provider_sepa.emulator.server import EmulatorServer

from .conftest import bearer, request_token, run_job

NS = {"p": PAIN_008_NAMESPACE}
AMOUNT = re.compile(r"\d+\.\d{2}")


@pytest.fixture(scope="module")
def exported(shared_server: EmulatorServer, shared_client: httpx.Client) -> tuple[dict, httpx.Response]:
    """Run one job on the shared server and return its JobDetails and the download response."""
    headers = bearer(request_token(shared_server))
    job = run_job(shared_client, headers, "main")
    response = shared_client.get(f"/sepa-export/demo/files/{job['fileId']}", headers=headers)
    return job, response


def test_download_headers(exported: tuple[dict, httpx.Response]) -> None:
    _, response = exported

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain;charset=UTF-8"
    assert int(response.headers["content-length"]) == len(response.content)


def test_download_matches_file_on_disk(shared_server: EmulatorServer, exported: tuple[dict, httpx.Response]) -> None:
    job, response = exported
    info = shared_server.state.file_info(job["fileId"])

    assert response.content == Path(info["path"]).read_bytes()
    assert hashlib.sha256(response.content).hexdigest() == info["sha256"]
    assert len(response.content) == info["size"]


def test_download_unknown_file_404(shared_server: EmulatorServer, shared_client: httpx.Client) -> None:
    headers = bearer(request_token(shared_server))

    response = shared_client.get("/sepa-export/demo/files/00000000-0000-4000-8000-000000000000", headers=headers)

    assert response.status_code == 404
    assert response.json() == {"message": "Given resource has not been found."}


def test_file_totals_match_transactions(shared_server: EmulatorServer, exported: tuple[dict, httpx.Response]) -> None:
    job, response = exported
    summary = summarize_pain008(response.content)
    info = shared_server.state.file_info(job["fileId"])

    assert summary["is_consistent"] is True
    assert summary["nb_of_txs_declared"] == summary["nb_of_txs_counted"] == job["ordersExportedCount"]
    assert summary["ctrl_sum_declared"] == summary["ctrl_sum_computed"] == info["ctrl_sum"]
    assert len(summary["payment_infos"]) == 1
    assert summary["payment_infos"][0]["nb_of_txs_declared"] == job["ordersExportedCount"]
    assert summary["payment_infos"][0]["ctrl_sum_declared"] == info["ctrl_sum"]
    assert summary["currencies"] == ["EUR"]
    assert summary["all_ibans_valid"] is True
    assert summary["iban_count"] == job["ordersExportedCount"] + 1


def test_file_is_pain008_structure(exported: tuple[dict, httpx.Response]) -> None:
    _, response = exported
    assert response.content.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')

    root = ElementTree.fromstring(response.content)

    assert root.tag == f"{{{PAIN_008_NAMESPACE}}}Document"
    header = root.find("p:CstmrDrctDbtInitn/p:GrpHdr", NS)
    assert header is not None
    assert header.findtext("p:MsgId", namespaces=NS)
    assert header.findtext("p:InitgPty/p:Nm", namespaces=NS)
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z", header.findtext("p:CreDtTm", namespaces=NS) or "")
    payment = root.find("p:CstmrDrctDbtInitn/p:PmtInf", NS)
    assert payment is not None
    assert payment.findtext("p:PmtMtd", namespaces=NS) == "DD"
    assert payment.findtext("p:PmtTpInf/p:SvcLvl/p:Cd", namespaces=NS) == "SEPA"
    assert payment.findtext("p:PmtTpInf/p:LclInstrm/p:Cd", namespaces=NS) == "CORE"
    assert payment.findtext("p:PmtTpInf/p:SeqTp", namespaces=NS) == "RCUR"
    assert payment.findtext("p:ChrgBr", namespaces=NS) == "SLEV"
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", payment.findtext("p:ReqdColltnDt", namespaces=NS) or "")
    assert iban_is_valid(payment.findtext("p:CdtrAcct/p:Id/p:IBAN", namespaces=NS) or "")
    assert payment.findtext("p:CdtrAgt/p:FinInstnId/p:BIC", namespaces=NS)
    assert payment.findtext("p:CdtrSchmeId/p:Id/p:PrvtId/p:Othr/p:Id", namespaces=NS)


def test_transactions_have_required_fields(exported: tuple[dict, httpx.Response]) -> None:
    _, response = exported
    root = ElementTree.fromstring(response.content)
    transactions = root.findall(".//p:DrctDbtTxInf", NS)

    assert transactions
    for transaction in transactions:
        amount = transaction.find("p:InstdAmt", NS)
        assert amount is not None
        assert amount.get("Ccy") == "EUR"
        assert AMOUNT.fullmatch(amount.text or "")
        end_to_end_id = transaction.findtext("p:PmtId/p:EndToEndId", namespaces=NS) or ""
        assert end_to_end_id.startswith("main-")
        assert transaction.findtext("p:RmtInf/p:Ustrd", namespaces=NS) == f"Order {end_to_end_id}"
        assert transaction.findtext("p:DrctDbtTx/p:MndtRltdInf/p:MndtId", namespaces=NS)
        assert transaction.findtext("p:DrctDbtTx/p:MndtRltdInf/p:DtOfSgntr", namespaces=NS)
        assert transaction.findtext("p:DbtrAgt/p:FinInstnId/p:BIC", namespaces=NS)
        assert transaction.findtext("p:Dbtr/p:Nm", namespaces=NS)
        assert iban_is_valid(transaction.findtext("p:DbtrAcct/p:Id/p:IBAN", namespaces=NS) or "")


def test_non_ascii_names_round_trip(exported: tuple[dict, httpx.Response]) -> None:
    _, response = exported
    root = ElementTree.fromstring(response.content)
    names = [element.text or "" for element in root.iterfind(".//p:Dbtr/p:Nm", NS)]

    assert names[0] in NON_ASCII_NAMES
    assert names[0].encode("utf-8") in response.content
    assert any(not name.isascii() for name in names)
    assert set(names) <= set(NON_ASCII_NAMES) | {name for name in names if name.isascii()}


def test_large_site_written_in_batches(start_server) -> None:
    server = start_server(site_orders={"big": 2500})
    headers = bearer(request_token(server))
    with httpx.Client(base_url=server.url, timeout=30.0) as client:
        job = run_job(client, headers, "big")
        with client.stream("GET", f"/sepa-export/demo/files/{job['fileId']}", headers=headers) as response:
            digest = hashlib.sha256()
            content = bytearray()
            for chunk in response.iter_bytes():
                digest.update(chunk)
                content.extend(chunk)

    info = server.state.file_info(job["fileId"])
    assert job["ordersExportedCount"] == 2500
    assert digest.hexdigest() == info["sha256"]
    summary = summarize_pain008(bytes(content))
    assert summary["nb_of_txs_counted"] == 2500
    assert summary["is_consistent"] is True
