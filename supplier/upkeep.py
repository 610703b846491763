"""SIM upkeep by USSD: find the number of every SIM that does not say it; read balances.

A SIM whose number is unknown after `AT+CNUM` and the own-number phonebook
(and has none set by an operator or in `sims:`) is asked its network's
"what is my number" code (`networks:` `number_ussd:` per MCC+MNC, else the
built-in table below). The number is taken from the USSD answer, or from an
SMS that a service sender (a short code or a name) sends within
`sms_window` of the request ("request accepted, wait for an SMS"); such an
SMS is the answer, never pushed to a hub. The number is kept in the store
by ICCID, so a SIM is asked once in its life, not at every start; it ranks
below every other source (inventory: operator > config > modem > USSD).

Polite traffic: each SIM's first request is spread over `spread` seconds
after it is seen, requests start at most one per `pace` seconds across the
bank (512 SIMs never ask at once), one request per SIM at a time, and a SIM
without an answer is asked again after a back-off (`retry`, doubling, at
most 6 hours). The same pacing holds for balances.

Balances (`networks:` `balance_ussd:`, no built-in codes: an operator
chooses to spend the traffic): read when a SIM comes up, every
`balance_every`, and after a sale (FINISH 3) if `balance_after_sale`;
parsed into amount and currency (balances.py), kept with their time by
ICCID, shown on the status page and in `/metrics`; below `low_balance`
the SIM is marked.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal

import structlog

from modems.codes import UssdStatus
from modems.errors import ModemError, ParseError
from modems.events import SmsReceived
from modems.modem import Modem
from modems.pdu import SmsDeliver
from modems.replies import split_imsi
from modems.ussd import UssdAnswer, UssdError, UssdTimeout, phone_candidates

from .backend import StoreBackend
from .balances import parse_balance
from .config import UssdConfig
from .errors import StoreError
from .inventory import Inventory
from .logs import Episode
from .networks import CALLING_CODES, international_number
from .store import BalanceRow

__all__ = ["NUMBER_USSD", "Upkeep", "number_in"]

log = structlog.get_logger("supplier.upkeep")

# "What is my number" codes of the large operators of the countries networks.py
# maps, keyed by the home MCC+MNC (the SIM's IMSI). Each from the operator's own
# help pages (as of 2024); `networks: {MCCMNC: {number_ussd: …}}` overrides or adds.
NUMBER_USSD: dict[str, str] = {
    "25001": "*111*0887#",  # MTS Russia — mts.ru, "Как узнать свой номер"
    "25002": "*205#",  # MegaFon — megafon.ru/help, "Узнать свой номер"
    "25099": "*110*10#",  # Beeline Russia — moskva.beeline.ru/customers/help (number by SMS)
    "25020": "*201#",  # Tele2 Russia — msk.tele2.ru/help, "Как узнать свой номер"
    "25501": "*161#",  # Vodafone Ukraine — vodafone.ua/support, "Дізнатися свій номер"
    "25503": "*161#",  # Kyivstar — kyivstar.ua/uk/support, "Як дізнатися свій номер"
    "25506": "*161#",  # lifecell — lifecell.ua/uk/dopomoga, "Як дізнатися свій номер"
    "40101": "*160#",  # Beeline Kazakhstan — beeline.kz/ru/customers/help
    "62130": "*663#",  # MTN Nigeria — mtn.ng, "Check your MTN number"
    "62120": "*121*3*4#",  # Airtel Nigeria — airtel.com.ng/faq, "How do I know my number"
    "62150": "*135*8#",  # Glo Nigeria — gloworld.com/ng, "Know your Glo number"
}

# Digits after the country code (national significant number, ITU-T E.164 national plans).
_NSN_LENGTHS: dict[str, tuple[int, ...]] = {
    "7": (10,),
    "380": (9,),
    "234": (10,),
    "1": (10,),
    "44": (10,),
    "62": (9, 10, 11, 12),
    "91": (10,),
    "375": (9,),
    "373": (8,),
    "995": (9,),
    "374": (8,),
    "994": (9,),
    "998": (9,),
    "992": (9,),
    "996": (9,),
    "48": (9,),
    "49": (10, 11),
    "33": (9,),
}
_MAX_BACKOFF = 6 * 3600.0


def number_in(text: str, country: str | None) -> str | None:
    """The SIM's own number in an operator's answer, with the country code; None if none.

    Takes `+7 (916) 123-45-67`, `8-916-123-45-67`, `89161234567`,
    `9161234567`, `0501234567` (Ukraine) and the like; a number that does
    not fit the country's plan (length, country code) is not taken.
    """
    code = CALLING_CODES.get(country or "")
    for candidate in phone_candidates(text):
        digits = candidate.lstrip("+")
        if code is None:
            if candidate.startswith("+") and 10 <= len(digits) <= 15:
                return digits
            continue
        lengths = _NSN_LENGTHS.get(code, (9, 10))
        trunk = "8" if code == "7" else "0"
        if candidate.startswith("+"):
            full = digits
        elif len(digits) in lengths and not digits.startswith(("0", trunk)):
            full = code + digits  # the national number alone: `9161234567`
        else:
            full = international_number(digits, country)
        if full.startswith(code) and len(full) - len(code) in lengths:
            return full
    return None


def _service_sender(sender: str | None) -> bool:
    """An operator's service sender: a name (`Beeline`) or a short code, not a subscriber."""
    if not sender:
        return False
    digits = sender.lstrip("+")
    return not digits.isdigit() or len(digits) <= 6


NUMBER = "number"
BALANCE = "balance"


@dataclass(slots=True)
class _Job:
    iccid: str
    kind: str  # NUMBER or BALANCE
    due: float
    backoff: float
    requested_at: float | None = None
    running: bool = False


class Upkeep:
    """Number discovery and balances for the SIMs of one daemon.

    The daemon calls `sim_ready()` for every SIM that comes up, `takes()` for
    every SMS (before the inbox), `sold()` after a FINISH 3; `console()` is
    the operator's USSD.
    """

    def __init__(
        self,
        inventory: Inventory,
        store: StoreBackend,
        modem_for: Callable[[str], Modem | None],
        *,
        codes: Mapping[str, str],
        balance_codes: Mapping[str, str] | None = None,
        settings: UssdConfig,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.inventory = inventory
        self.store = store
        self.modem_for = modem_for
        self.settings = settings
        self.clock = clock
        self.notes: dict[str, str] = {}  # iccid → what the status page says about its number
        self.balances: dict[str, BalanceRow] = {}  # iccid → its last balance reading
        self._jobs: dict[tuple[str, str], _Job] = {}
        self.last_request: dict[str, float] = {}  # iccid → when it was last sent a request
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._next_start = 0.0
        # An answer could not be kept (the store refuses writes): logged once per episode.
        self._store_episode = Episode(time.monotonic)
        self._observers: list[Callable[[], None]] = []
        self.codes: dict[str, str] = {}
        self.balance_codes: dict[str, str] = {}
        self.set_codes(codes, balance_codes or {})

    def subscribe(self, observer: Callable[[], None]) -> None:
        """Be told whenever a number is learned or a SIM's note changes (tests, status page)."""
        self._observers.append(observer)

    def _changed(self) -> None:
        for observer in self._observers:
            observer()

    def set_codes(self, overrides: Mapping[str, str], balance_codes: Mapping[str, str]) -> None:
        """The built-in table with the config's `number_ussd:` on top, and `balance_ussd:`.

        Also at SIGHUP: SIMs waiting for a code are looked at again.
        """
        self.codes = {**NUMBER_USSD, **overrides}
        self.balance_codes = dict(balance_codes)
        for iccid, note in list(self.notes.items()):
            if note.startswith("number unknown: no USSD code"):
                self.sim_ready(iccid)  # a code for its network may be there now

    # -- lifecycle -------------------------------------------------------------------

    async def load(self) -> None:
        """Numbers learned before (kept by ICCID): into the inventory, not asked again."""
        for iccid, number in (await self.store.learned_numbers()).items():
            self.inventory.learned_number(iccid, number)
        self.balances = await self.store.balances()

    def start(self) -> None:
        if self._loop_task is None and self.settings.enabled:
            self._loop_task = asyncio.create_task(self._run(), name="upkeep")

    async def stop(self) -> None:
        tasks = [t for t in (self._loop_task, *self._tasks) if t is not None]
        self._loop_task = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    # -- what the daemon tells it ------------------------------------------------------

    def sim_ready(self, iccid: str) -> None:
        """A SIM came up: ask its number if nobody knows it (first time at a spread moment),
        and read its balance if its network has a code for that."""
        if self.settings.enabled and self.balance_code_for(iccid) is not None:
            self._schedule(iccid, BALANCE, self.clock() + random.uniform(0, self.settings.spread))
        sim = self.inventory.sims.get(iccid)
        if sim is None or sim.number is not None or sim.learned_number is not None:
            self._jobs.pop((iccid, NUMBER), None)
            self.notes.pop(iccid, None)
            return
        code = self.code_for(iccid)
        if code is None:
            self.notes[iccid] = f"number unknown: no USSD code for {self._network(iccid)}"
            return
        if not self.settings.enabled:
            self.notes[iccid] = "number unknown: USSD discovery is off"
            return
        if (iccid, NUMBER) not in self._jobs:
            self.notes[iccid] = f"number unknown: will ask {code}"
        self._schedule(iccid, NUMBER, self.clock() + random.uniform(0, self.settings.spread))

    def _schedule(self, iccid: str, kind: str, due: float) -> None:
        """A request due at `due` (an existing one keeps its time; the interval rule holds)."""
        if (iccid, kind) not in self._jobs:
            self._jobs[(iccid, kind)] = _Job(iccid, kind, due, self.settings.retry)
        self._wake.set()

    def sold(self, iccid: str) -> None:
        """FINISH 3 on this SIM: its balance went down; read it again (politely)."""
        if not self.settings.balance_after_sale or self.balance_code_for(iccid) is None:
            return
        job = self._jobs.get((iccid, BALANCE))
        if job is None:
            self._schedule(iccid, BALANCE, self.clock())
        elif not job.running:
            job.due = min(job.due, self.clock())
            self._wake.set()

    def balance_code_for(self, iccid: str) -> str | None:
        sim = self.inventory.sims.get(iccid)
        if sim is None or not sim.imsi:
            return None
        return self.balance_codes.get(sim.imsi[:6]) or self.balance_codes.get(sim.imsi[:5])

    def low(self, iccid: str) -> bool:
        """Its last balance is under `low_balance` (the operator may block it soon)."""
        threshold = self.settings.low_balance
        reading = self.balances.get(iccid)
        if threshold is None or reading is None or reading.amount is None:
            return False
        return Decimal(reading.amount) < threshold

    def code_for(self, iccid: str) -> str | None:
        sim = self.inventory.sims.get(iccid)
        if sim is None or not sim.imsi:
            return None
        return self.codes.get(sim.imsi[:6]) or self.codes.get(sim.imsi[:5])

    def _network(self, iccid: str) -> str:
        sim = self.inventory.sims.get(iccid)
        imsi = sim.imsi if sim is not None else None
        try:
            mcc, mnc = split_imsi(imsi or "")
        except ParseError:
            return "an unknown network"
        return f"{mcc}-{mnc}"

    def note(self, iccid: str) -> str | None:
        """Why a SIM has no number (or a conflict), for the status page."""
        other = self.inventory.conflicting(iccid)
        if other is not None:
            return f"number also claimed by SIM {other}: not sold until resolved"
        return self.notes.get(iccid)

    async def takes(self, event: SmsReceived) -> bool:
        """An SMS that answers our number request: learned, and not for any hub (True)."""
        job = self._jobs.get((event.iccid, NUMBER))
        message = event.message
        if job is None or job.requested_at is None or not isinstance(message, SmsDeliver):
            return False
        if self.clock() - job.requested_at > self.settings.sms_window:
            return False
        if not _service_sender(message.sender):
            return False
        sim = self.inventory.sims.get(event.iccid)
        if sim is None or sim.number is not None:
            # Its number came from elsewhere (an operator, the config) since we asked:
            # the SIM may be sold, and this SMS may be a hub's. Nothing to learn.
            return False
        number = number_in(message.text, sim.country)
        if number is None:
            return False
        await self._learn(event.iccid, number, f"SMS from {message.sender}")
        return True

    # -- the operator's console -------------------------------------------------------

    async def console(
        self, iccid: str, *, code: str | None = None, reply: str | None = None
    ) -> UssdAnswer | None:
        """An operator's USSD: a code, a menu reply, or (neither) closing the open menu.

        Logged with the code, never the answer (it may hold a balance, a PIN,
        a top-up voucher). Raises UssdError when the SIM is in no ready modem.
        """
        modem = self.modem_for(iccid)
        if modem is None or not modem.ready:
            raise UssdError(f"SIM {iccid} is not in a ready modem")
        log.info(
            "USSD from an operator",
            iccid=iccid,
            port=modem.port,
            code=code,
            menu_reply=reply is not None,
        )
        self.last_request[iccid] = self.clock()  # discovery keeps its distance
        if code is not None:
            return await modem.ussd.request(code, timeout=self.settings.timeout)
        if reply is not None:
            return await modem.ussd.reply(reply, timeout=self.settings.timeout)
        await modem.ussd.close()
        return None

    # -- the requests ---------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            now = self.clock()
            waiting = [j for j in self._jobs.values() if not j.running]
            due = sorted((j for j in waiting if j.due <= now), key=lambda j: j.due)
            for job in due:
                if now < self._next_start:
                    break
                polite = self.last_request.get(job.iccid, -1e18) + self.settings.interval
                if now < polite:
                    job.due = polite  # one request per SIM per `interval`, whatever it asks
                    continue
                self._next_start = now + self.settings.pace
                self.last_request[job.iccid] = now
                job.running = True
                task = asyncio.create_task(self._ask(job), name=f"ussd {job.iccid}")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            upcoming = [j.due for j in self._jobs.values() if not j.running]
            wait = min([*upcoming, now + 5.0]) - now
            wait = max(wait, self._next_start - now, 0.05)
            self._wake.clear()
            try:
                async with asyncio.timeout(wait):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _ask(self, job: _Job) -> None:
        try:
            if job.kind == BALANCE:
                await self._ask_balance(job)
            else:
                await self._ask_number(job)
        except StoreError as exc:
            # The answer could not be kept (the database is down): asked again after the
            # job's back-off, like an unanswered request, never at once.
            self._retry(job, "the answer could not be stored" if job.kind == NUMBER else None)
            if self._store_episode.failed():
                log.error("cannot store a USSD answer; asking again later", error=str(exc))
            else:
                log.debug("cannot store a USSD answer", iccid=job.iccid, error=str(exc))
        finally:
            job.running = False
            self._wake.set()
            self._changed()

    async def _ask_number(self, job: _Job) -> None:
        iccid = job.iccid
        bound = log.bind(iccid=iccid)
        sim = self.inventory.sims.get(iccid)
        code = self.code_for(iccid)
        modem = self.modem_for(iccid)
        if sim is None or sim.number is not None or code is None:
            self._jobs.pop((iccid, NUMBER), None)
            return
        if modem is None or not modem.ready:
            self._jobs.pop((iccid, NUMBER), None)  # asked again when it comes back (sim_ready)
            return
        bound = bound.bind(port=modem.port, code=code)
        job.requested_at = self.clock()
        self.notes[iccid] = f"number unknown: asked {code}, waiting for the answer"
        try:
            answer = await modem.ussd.request(code, timeout=self.settings.timeout)
        except UssdTimeout:
            self._retry(job, f"no answer to {code}")
            bound.info("number request unanswered", retry_in=job.backoff)
            return
        except ModemError as exc:
            self._retry(job, f"{code} failed: {exc}")
            bound.info("number request failed", error=str(exc))
            return
        if answer.menu:
            await modem.ussd.close()  # a number inside a menu: leave it at once
        number = number_in(answer.text, sim.country)
        if number is not None:
            await self._learn(iccid, number, f"USSD {code}")
        elif answer.status == UssdStatus.NOT_SUPPORTED:
            self._retry(job, f"the network does not support {code}")
            bound.warning("number code not supported by the network")
        else:
            # "Request accepted": the number may come by SMS within the window.
            self._retry(job, f"no number in the answer to {code}; waiting for an SMS")
            bound.info("number request answered without a number", status=answer.status)

    async def _ask_balance(self, job: _Job) -> None:
        iccid = job.iccid
        code = self.balance_code_for(iccid)
        modem = self.modem_for(iccid)
        if code is None:
            self._jobs.pop((iccid, BALANCE), None)
            return
        if modem is None or not modem.ready:
            self._jobs.pop((iccid, BALANCE), None)  # read again when it comes back
            return
        bound = log.bind(iccid=iccid, port=modem.port, code=code)
        try:
            answer = await modem.ussd.request(code, timeout=self.settings.timeout)
        except ModemError as exc:
            self._retry(job, None)
            bound.info("balance request failed", error=str(exc))
            return
        if answer.menu:
            await modem.ussd.close()
        parsed = parse_balance(answer.text)
        now = self.clock()
        row = BalanceRow(
            amount=str(parsed.amount) if parsed is not None else None,
            currency=parsed.currency if parsed is not None else None,
            text=answer.text[:500],
            read=now,
        )
        asked = self._store_episode.asked()  # before the write: see logs.Episode
        await self.store.save_balance(iccid, row)
        self._stored(asked)
        self.balances[iccid] = row
        job.due = now + self.settings.balance_every
        job.backoff = self.settings.retry
        bound.info("balance read", amount=row.amount, currency=row.currency, low=self.low(iccid))

    def _stored(self, asked: int | None) -> None:
        """An answer asked to be stored in episode `asked` was: that episode, if it is
        still the current one, is over (one asked before may commit after a later one failed)."""
        ended = self._store_episode.ended(asked)
        if ended is not None:
            log.info("USSD answers stored again", after=round(ended[0], 1), refused=ended[1])

    def _retry(self, job: _Job, why: str | None) -> None:
        delay = max(job.backoff, self.settings.interval)
        job.due = self.clock() + delay * random.uniform(1.0, 1.2)
        job.backoff = min(job.backoff * 2, _MAX_BACKOFF)
        if why is None:
            return
        when = f"{round(delay / 60)} min" if delay >= 120 else f"{round(delay)} s"
        self.notes[job.iccid] = f"number unknown: {why}; next try in {when}"

    async def _learn(self, iccid: str, number: str, source: str) -> None:
        asked = self._store_episode.asked()
        await self.store.learn_number(iccid, number, source, self.clock())
        self._stored(asked)
        self.inventory.learned_number(iccid, number)
        self._jobs.pop((iccid, NUMBER), None)
        self.notes.pop(iccid, None)
        log.info("SIM number learned", iccid=iccid, number=number, source=source)
        self._changed()
