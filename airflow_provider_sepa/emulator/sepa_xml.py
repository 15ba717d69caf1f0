"""Streaming writer and summary reader for ISO 20022 pain.008.001.02 direct debit files.

The writer produces one ``PmtInf`` block (CORE, recurring) with one ``DrctDbtTxInf`` per
order. It writes each transaction as it goes, so a file of any size needs little memory.
"""

from __future__ import annotations

import hashlib
import io
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import IO, Any, Protocol
from xml.sax.saxutils import escape

from airflow_provider_sepa.emulator.iban import iban_is_valid
from airflow_provider_sepa.emulator.orders import Creditor, Order

__all__ = [
    "PAIN_008_NAMESPACE",
    "Pain008Header",
    "WriteResult",
    "build_pain008",
    "iban_is_valid",
    "summarize_pain008",
    "summarize_pain008_file",
    "write_pain008",
]

PAIN_008_NAMESPACE = "urn:iso:std:iso:20022:tech:xsd:pain.008.001.02"
XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>\n'

# Maximum text lengths of the pain.008.001.02 schema (Max35Text, Max70Text, Max140Text).
MAX_ID_LENGTH = 35
MAX_NAME_LENGTH = 70
MAX_REMITTANCE_LENGTH = 140

# Number of transactions collected in memory before they are encoded and written.
_WRITE_BATCH_SIZE = 1000


class CancelSignal(Protocol):
    """Object whose ``is_set()`` turns true when writing must stop, such as threading.Event."""

    def is_set(self) -> bool:
        """Return whether writing must stop."""
        ...


class WriteCancelledError(RuntimeError):
    """Raised by :func:`write_pain008` when its cancel signal is set."""


@dataclass(frozen=True)
class Pain008Header:
    """Values of the group header and the payment information block."""

    message_id: str
    created_at: datetime
    initiating_party: str
    payment_info_id: str
    collection_date: date
    creditor: Creditor


@dataclass(frozen=True)
class WriteResult:
    """Size in bytes, SHA-256 hex digest and totals of a written file."""

    size: int
    sha256: str
    nb_of_txs: int
    ctrl_sum: Decimal


def _text(value: str, max_length: int) -> str:
    return escape(value[:max_length])


def _amount(value: Decimal) -> str:
    return f"{value:.2f}"


def _header_xml(header: Pain008Header, nb_of_txs: int, ctrl_sum: Decimal) -> str:
    created_at = header.created_at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    creditor = header.creditor
    return (
        XML_DECLARATION
        + f'<Document xmlns="{PAIN_008_NAMESPACE}">\n'
        + "  <CstmrDrctDbtInitn>\n"
        + "    <GrpHdr>\n"
        + f"      <MsgId>{_text(header.message_id, MAX_ID_LENGTH)}</MsgId>\n"
        + f"      <CreDtTm>{created_at}</CreDtTm>\n"
        + f"      <NbOfTxs>{nb_of_txs}</NbOfTxs>\n"
        + f"      <CtrlSum>{_amount(ctrl_sum)}</CtrlSum>\n"
        + f"      <InitgPty><Nm>{_text(header.initiating_party, MAX_NAME_LENGTH)}</Nm></InitgPty>\n"
        + "    </GrpHdr>\n"
        + "    <PmtInf>\n"
        + f"      <PmtInfId>{_text(header.payment_info_id, MAX_ID_LENGTH)}</PmtInfId>\n"
        + "      <PmtMtd>DD</PmtMtd>\n"
        + f"      <NbOfTxs>{nb_of_txs}</NbOfTxs>\n"
        + f"      <CtrlSum>{_amount(ctrl_sum)}</CtrlSum>\n"
        + "      <PmtTpInf>\n"
        + "        <SvcLvl><Cd>SEPA</Cd></SvcLvl>\n"
        + "        <LclInstrm><Cd>CORE</Cd></LclInstrm>\n"
        + "        <SeqTp>RCUR</SeqTp>\n"
        + "      </PmtTpInf>\n"
        + f"      <ReqdColltnDt>{header.collection_date.isoformat()}</ReqdColltnDt>\n"
        + f"      <Cdtr><Nm>{_text(creditor.name, MAX_NAME_LENGTH)}</Nm></Cdtr>\n"
        + f"      <CdtrAcct><Id><IBAN>{creditor.iban}</IBAN></Id></CdtrAcct>\n"
        + f"      <CdtrAgt><FinInstnId><BIC>{creditor.bic}</BIC></FinInstnId></CdtrAgt>\n"
        + "      <ChrgBr>SLEV</ChrgBr>\n"
        + "      <CdtrSchmeId><Id><PrvtId><Othr>"
        + f"<Id>{creditor.creditor_id}</Id><SchmeNm><Prtry>SEPA</Prtry></SchmeNm>"
        + "</Othr></PrvtId></Id></CdtrSchmeId>\n"
    )


def _transaction_xml(order: Order) -> str:
    return (
        "      <DrctDbtTxInf>\n"
        + f"        <PmtId><EndToEndId>{_text(order.end_to_end_id, MAX_ID_LENGTH)}</EndToEndId></PmtId>\n"
        + f'        <InstdAmt Ccy="{order.currency}">{_amount(order.amount)}</InstdAmt>\n'
        + "        <DrctDbtTx><MndtRltdInf>"
        + f"<MndtId>{_text(order.mandate_id, MAX_ID_LENGTH)}</MndtId>"
        + f"<DtOfSgntr>{order.mandate_signed_on.isoformat()}</DtOfSgntr>"
        + "</MndtRltdInf></DrctDbtTx>\n"
        + f"        <DbtrAgt><FinInstnId><BIC>{order.debtor_bic}</BIC></FinInstnId></DbtrAgt>\n"
        + f"        <Dbtr><Nm>{_text(order.debtor_name, MAX_NAME_LENGTH)}</Nm></Dbtr>\n"
        + f"        <DbtrAcct><Id><IBAN>{order.debtor_iban}</IBAN></Id></DbtrAcct>\n"
        + f"        <RmtInf><Ustrd>{_text('Order ' + order.order_id, MAX_REMITTANCE_LENGTH)}</Ustrd></RmtInf>\n"
        + "      </DrctDbtTxInf>\n"
    )


_FOOTER_XML = "    </PmtInf>\n  </CstmrDrctDbtInitn>\n</Document>\n"


def write_pain008(
    output: IO[bytes],
    header: Pain008Header,
    orders: Iterable[Order],
    nb_of_txs: int,
    ctrl_sum: Decimal,
    cancel: CancelSignal | None = None,
) -> WriteResult:
    """Write a pain.008.001.02 document to the binary stream ``output`` in UTF-8.

    ``nb_of_txs`` and ``ctrl_sum`` go into the headers, which precede the transactions, so
    the caller computes them in advance. Raise ValueError after writing when ``orders`` did
    not match them, because the document would then be inconsistent. Raise
    :class:`WriteCancelledError` when ``cancel`` is set between two batches.
    """
    digest = hashlib.sha256()
    size = 0

    def write_text(text: str) -> None:
        nonlocal size
        data = text.encode("utf-8")
        digest.update(data)
        size += len(data)
        output.write(data)

    write_text(_header_xml(header, nb_of_txs, ctrl_sum))
    written_count = 0
    written_sum = Decimal("0.00")
    batch: list[str] = []
    for order in orders:
        batch.append(_transaction_xml(order))
        written_count += 1
        written_sum += order.amount
        if len(batch) >= _WRITE_BATCH_SIZE:
            if cancel is not None and cancel.is_set():
                raise WriteCancelledError("Writing the pain.008 file was cancelled.")
            write_text("".join(batch))
            batch.clear()
    write_text("".join(batch))
    write_text(_FOOTER_XML)

    if written_count != nb_of_txs or written_sum != ctrl_sum:
        raise ValueError(
            f"Orders do not match the header totals: wrote {written_count} transactions summing to "
            f"{written_sum}, but the header declares {nb_of_txs} summing to {ctrl_sum}."
        )
    return WriteResult(size=size, sha256=digest.hexdigest(), nb_of_txs=nb_of_txs, ctrl_sum=ctrl_sum)


def build_pain008(header: Pain008Header, orders: Iterable[Order]) -> bytes:
    """Build a pain.008.001.02 document in memory, for small sets of orders."""
    order_list = list(orders)
    ctrl_sum = sum((order.amount for order in order_list), Decimal("0.00"))
    buffer = io.BytesIO()
    write_pain008(buffer, header, order_list, nb_of_txs=len(order_list), ctrl_sum=ctrl_sum)
    return buffer.getvalue()


def _parse_int(text: str | None, field_name: str) -> int:
    try:
        return int((text or "").strip())
    except ValueError:
        raise ValueError(f"Invalid {field_name} {text!r}: expected an integer.") from None


def _parse_decimal(text: str | None, field_name: str) -> Decimal:
    try:
        return Decimal((text or "").strip())
    except InvalidOperation:
        raise ValueError(f"Invalid {field_name} {text!r}: expected a decimal amount.") from None


def _summarize(source: IO[bytes]) -> dict[str, Any]:
    """Read a pain.008.001.02 document incrementally and collect its totals and IBANs."""
    prefix = "{" + PAIN_008_NAMESPACE + "}"
    summary: dict[str, Any] = {
        "namespace": PAIN_008_NAMESPACE,
        "msg_id": None,
        "creation_date_time": None,
        "nb_of_txs_declared": None,
        "nb_of_txs_counted": 0,
        "ctrl_sum_declared": None,
        "ctrl_sum_computed": Decimal("0.00"),
        "payment_infos": [],
        "currencies": [],
        "iban_count": 0,
        "invalid_ibans": [],
    }
    currencies: set[str] = set()
    payment_info: dict[str, Any] = {}
    # Local names of the open elements, and the elements themselves so that finished
    # transactions can be detached from their parent to keep memory flat.
    names: list[str] = []
    elements: list[ElementTree.Element] = []

    for event, element in ElementTree.iterparse(source, events=("start", "end")):
        if not element.tag.startswith(prefix):
            raise ValueError(f"Unexpected element {element.tag!r}: expected the namespace {PAIN_008_NAMESPACE}.")
        name = element.tag[len(prefix) :]
        if event == "start":
            if not names and name != "Document":
                raise ValueError(f"Unexpected root element {name!r}: expected 'Document'.")
            names.append(name)
            elements.append(element)
            if name == "PmtInf":
                payment_info = {
                    "pmt_inf_id": None,
                    "nb_of_txs_declared": None,
                    "nb_of_txs_counted": 0,
                    "ctrl_sum_declared": None,
                    "ctrl_sum_computed": Decimal("0.00"),
                }
            continue

        parent = names[-2] if len(names) >= 2 else ""
        text = element.text
        if parent == "GrpHdr":
            if name == "MsgId":
                summary["msg_id"] = text
            elif name == "CreDtTm":
                summary["creation_date_time"] = text
            elif name == "NbOfTxs":
                summary["nb_of_txs_declared"] = _parse_int(text, "GrpHdr/NbOfTxs")
            elif name == "CtrlSum":
                summary["ctrl_sum_declared"] = _parse_decimal(text, "GrpHdr/CtrlSum")
        elif parent == "PmtInf":
            if name == "PmtInfId":
                payment_info["pmt_inf_id"] = text
            elif name == "NbOfTxs":
                payment_info["nb_of_txs_declared"] = _parse_int(text, "PmtInf/NbOfTxs")
            elif name == "CtrlSum":
                payment_info["ctrl_sum_declared"] = _parse_decimal(text, "PmtInf/CtrlSum")
        elif name == "InstdAmt" and parent == "DrctDbtTxInf":
            amount = _parse_decimal(text, "InstdAmt")
            currencies.add(element.get("Ccy", ""))
            summary["nb_of_txs_counted"] += 1
            summary["ctrl_sum_computed"] += amount
            payment_info["nb_of_txs_counted"] += 1
            payment_info["ctrl_sum_computed"] += amount
        elif name == "IBAN":
            summary["iban_count"] += 1
            iban = (text or "").strip()
            if not iban_is_valid(iban) and len(summary["invalid_ibans"]) < 100:
                summary["invalid_ibans"].append(iban)

        names.pop()
        elements.pop()
        if name == "DrctDbtTxInf":
            elements[-1].remove(element)
        elif name == "PmtInf":
            summary["payment_infos"].append(payment_info)
            elements[-1].remove(element)

    if not summary["payment_infos"] and summary["msg_id"] is None:
        raise ValueError("The document has no GrpHdr and no PmtInf: it is not a pain.008 message.")
    summary["currencies"] = sorted(currencies)
    summary["all_ibans_valid"] = summary["iban_count"] > 0 and not summary["invalid_ibans"]
    summary["ibans_valid"] = summary["all_ibans_valid"]
    summary["is_consistent"] = _is_consistent(summary)
    return summary


def _is_consistent(summary: dict[str, Any]) -> bool:
    """Return whether declared counts and sums match the transactions and all IBANs are valid."""
    if summary["nb_of_txs_declared"] != summary["nb_of_txs_counted"]:
        return False
    if summary["ctrl_sum_declared"] != summary["ctrl_sum_computed"]:
        return False
    for payment_info in summary["payment_infos"]:
        if payment_info["nb_of_txs_declared"] != payment_info["nb_of_txs_counted"]:
            return False
        if payment_info["ctrl_sum_declared"] != payment_info["ctrl_sum_computed"]:
            return False
    return bool(summary["all_ibans_valid"])


def summarize_pain008(data: bytes) -> dict[str, Any]:
    """Parse a pain.008.001.02 document and return its declared and computed totals.

    ``nb_of_txs_declared`` and ``ctrl_sum_declared`` come from GrpHdr, while
    ``nb_of_txs_counted`` and ``ctrl_sum_computed`` come from the transactions.
    ``payment_infos`` has the same four keys per PmtInf block. The IBAN keys are
    ``iban_count``, ``invalid_ibans`` (at most 100) and ``all_ibans_valid``, with
    ``ibans_valid`` as an alias. ``is_consistent`` is true when every declared total
    matches and every IBAN is valid. Sums are :class:`~decimal.Decimal`.
    Raise ValueError when the document is not well-formed XML or not pain.008.001.02.
    """
    return summarize_pain008_file(io.BytesIO(data))


def summarize_pain008_file(source: str | Path | IO[bytes]) -> dict[str, Any]:
    """Summarize a pain.008.001.02 file like :func:`summarize_pain008`, reading it incrementally."""
    try:
        if isinstance(source, str | Path):
            with open(source, "rb") as stream:
                return _summarize(stream)
        return _summarize(source)
    except ElementTree.ParseError as error:
        raise ValueError(f"Invalid XML in the pain.008 document: {error}") from error
