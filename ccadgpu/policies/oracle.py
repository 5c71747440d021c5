"""``oracle``: the offline yardstick.  From a recorded trace and a profile, a placement schedule
(which pages sit on the device before each epoch) that minimises modeled time.

**What it guarantees, exactly.**  The model prices each epoch's traffic per page
(``sectors * 32 / bandwidth[processor, node]``) and each migration per page
(``page_size / link + per_page``); it is additive over pages, so without a capacity limit the
optimum decomposes into one two-state shortest path per page, solved exactly by dynamic
programming over the epochs (vectorised over pages).  That uncapacitated optimum is reported
as ``lower_bound``: **no placement policy, online or offline, can beat it** under this model
(the launch overheads are added as they are, and each epoch's per-node latency terms are
bounded below by one smallest latency per active processor).  With the device's capacity, the oracle adds a price
``lambda`` per device page per epoch (Lagrangian relaxation; ``lambda`` by bisection, the
smallest that respects the capacity) and, if an epoch still overflows, sends the pages with the
least benefit in that epoch to the host.  The resulting schedule is **feasible and, when capacity does
not bind, optimal for the traffic and migration terms** (an epoch it splits over both nodes may
pay one more per-node latency, a few hundred ns, than the best single-node choice); under capacity pressure it is a heuristic whose gap is
bounded by ``cost - lower_bound``, which the results report.  Moves happen before the epoch as
prefetches (no fault cost), the way a perfect prefetcher would issue them.

**Under the user's own actions** (a trace with ``user_events``: :class:`UserConstraints`,
built by :func:`ccadgpu.replay.user_constraints`) the recurrence takes the user's moves as
free transitions before the epoch (after the oracle's own moves, for one made while that
epoch's faults had run) and forbids the device while it is offline; both hold for every policy,
so the bound keeps them.  Pins, the hints' vetoes and the manager's moves to a preferred
location shape the schedule only: ``static`` escapes the last, so a bound that assumed them
would not be one.  The user's moves to the device, and the manager's to a preferred
location, take only the pages that fit (a full device, a smaller one than recorded), and
a page freed and allocated again is born where its new allocation puts it: the bound lets
the moves up not happen.  Given a ``score`` (a replay of a schedule), the planner weighs
following them, leaving them to chance, re-planning with the moves that find room, given
candidates, and filling the device just before a move it does not want (:func:`_schedule`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from ..errors import InvalidArgumentError
from .base import DEVICE, HOST, Move, Policy

if TYPE_CHECKING:
    from ..clock import Profile
    from ..manager import Epoch, PolicyContext

SECTOR = 32
CPU_PROC = 0               # the CPU's processor index in an epoch's sectors


@dataclass
class OracleSchedule:
    """``on_device[e, i]``: page ``vpns[i]`` is on the device during epoch ``e``."""
    vpns: np.ndarray
    on_device: np.ndarray
    lower_bound: float         # seconds: the uncapacitated optimum (access + migration)
    planned_cost: float        # seconds: the schedule's traffic + migration cost, plus the
    #                            same placement-independent terms as lower_bound
    lam: float                 # the capacity price used


def _traffic(epochs: Sequence["Epoch"], vpns: np.ndarray, per_byte: np.ndarray) -> np.ndarray:
    """``[k, E, U]`` traffic seconds of each page in each epoch, for each column of
    ``per_byte[proc, k]`` (seconds per byte of each processor's traffic)."""
    out = np.zeros((per_byte.shape[1], len(epochs), len(vpns)))
    for e, ep in enumerate(epochs):
        if len(ep.vpns):
            by_proc = ep.sectors.sum(axis=2) * SECTOR          # [n, proc] bytes
            out[:, e, np.searchsorted(vpns, ep.vpns)] = (by_proc @ per_byte).T
    return out


def _costs(epochs: Sequence["Epoch"], vpns: np.ndarray, profile: "Profile"
           ) -> tuple[np.ndarray, np.ndarray]:
    """``[E, U]`` traffic seconds with the page on the host, and on the device."""
    ch, cd = _traffic(epochs, vpns, 1.0 / profile.bandwidth[:, [HOST, DEVICE]])
    return ch, cd


def _split_costs(epochs: Sequence["Epoch"], vpns: np.ndarray, profile: "Profile"
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``[E, U]`` traffic seconds with each processor's at its cheaper node (below any
    placement's, a copy on each node included), and with a copy on each node (the CPU's
    at the host, the device's at the device: a read-mostly duplicate)."""
    inv_bw = 1.0 / profile.bandwidth          # [proc, node]
    mine = np.array([inv_bw[p, HOST if p == CPU_PROC else DEVICE] for p in range(len(inv_bw))])
    floor, both = _traffic(epochs, vpns, np.stack([inv_bw.min(axis=1), mine], axis=1))
    return floor, both


@dataclass
class UserConstraints:
    """What the user's own placement actions (a trace's ``user_events``) impose on a schedule
    over pages ``vpns``, epoch by epoch (``[E, U]`` arrays; before epoch ``e`` the user acts
    first, then the policy moves).

    ``forced[e, i]``: the node the user moved page ``vpns[i]`` to just before epoch ``e``
    (``move_pages``, ``prefetch``, an offline's evacuation of every device page; -1: none);
    free for the policy.
    ``offline[e]``: the device is offline during epoch ``e``; no page can be on it.
    ``no_up[e, i]`` / ``no_down[e, i]``: the manager refuses a policy's move of the page to
    the device / host before epoch ``e`` (a pin; a preferred-location or accessed-by hint).
    ``hinted[e, i]``: the node the manager itself moves the page to for epoch ``e``, its
    preferred location, whose processor touches it then (-1: none; every policy but
    ``static``)."""
    forced: np.ndarray
    offline: np.ndarray
    no_up: np.ndarray
    no_down: np.ndarray
    hinted: np.ndarray
    #: ``pinned[e, i]``: the page is pinned during epoch ``e`` (a CPU touch cannot fault it
    #: home under ``migrate_on_cpu_fault``: it reads it where it is); None: never
    pinned: np.ndarray | None = None
    #: ``born[e, i]``: its ``forced`` move to the device is the page's birth there (allocated
    #: again): with no room it is born on the host instead, wherever it was before; None: never
    born: np.ndarray | None = None
    #: ``read_mostly[e, i]``: the page is read-mostly during epoch ``e`` (a policy's move to
    #: the device then makes a duplicate there); None: never
    read_mostly: np.ndarray | None = None
    #: ``duplicated[e, i]``: the user's prefetch duplicated the page (if on the host) on the
    #: device just before epoch ``e``, free; None: never
    duplicated: np.ndarray | None = None

    #: the pages the user's actions reach, and their constraints, per kind of use (_dp)
    _split: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def reached(self, vetoes: bool) -> "tuple[np.ndarray, UserConstraints]":
        """The mask of pages a forced move (and with ``vetoes``, a refusal) reaches, and
        their constraints (computed once: a capacity search asks for them at every step)."""
        if vetoes not in self._split:
            some = (self.forced >= 0).any(axis=0)
            if vetoes:
                some |= self.no_up.any(axis=0) | self.no_down.any(axis=0)
            self._split[vetoes] = some, self.columns(some)
        return self._split[vetoes]

    def columns(self, keep: np.ndarray) -> "UserConstraints":
        """The constraints of the pages ``keep`` (a mask over ``vpns``) only."""
        return UserConstraints(self.forced[:, keep], self.offline, self.no_up[:, keep],
                               self.no_down[:, keep], self.hinted[:, keep],
                               *(None if a is None else a[:, keep] for a in (
                                   self.pinned, self.born, self.read_mostly,
                                   self.duplicated)))


def _dp(ch: np.ndarray, cd: np.ndarray, init_dev: np.ndarray, up: float, down: float,
        user: UserConstraints | None = None, vetoes: bool = True,
        sure_up: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per page, the cheapest host/device sequence.  Returns (on_device[E, U], cost[U]).
    With ``vetoes``, ``user``'s refusals apply; its moves home always happen, its moves to the
    device too with ``sure_up`` (default: ``vetoes``), else they may or may not (the bound:
    a full device takes none)."""
    if sure_up is None:
        sure_up = vetoes
    E, U = ch.shape
    if E == 0:
        return np.zeros((0, U), bool), np.zeros(U)
    if user is not None:
        # the general recurrence only where the user's actions reach: a pin of one page
        # must not put every page of the space on the slow path
        some, sub = user.reached(vetoes)
        if not some.all():
            # (the plain one over every page is cheaper than copying out the others)
            on, cost = _dp(ch, cd, init_dev, up, down)
            if some.any():
                on[:, some], cost[some] = _dp(ch[:, some], cd[:, some], init_dev[some], up,
                                              down, sub, vetoes, sure_up)
            return on, cost
    # before epoch e: from the state q at the end of e-1 the user's move (if any) leads to
    # p(q), free, and the policy's from p(q) to where the page is during e costs up/down
    vh = np.where(init_dev, np.inf, 0.0)
    vd = np.where(init_dev, 0.0, np.inf)
    dev_before_h = np.zeros((E, U), bool)    # the best way to host-at-e was device-at-(e-1)
    dev_before_d = np.zeros((E, U), bool)
    upc, downc = up, down
    for e in range(E):
        if user is None:                   # p(q) = q: stay, or switch at the policy's cost
            hh, hd, dh, dd = vh, vd + down, vh + up, vd
        else:
            f = user.forced[e]
            pd_h, pd_d = f == DEVICE, f != HOST     # p(host), p(device) on the device
            if vetoes:
                upc = np.where(user.no_up[e], np.inf, up)
                downc = np.where(user.no_down[e], np.inf, down)
            # a user's move to the device may not fit (another policy filled it, a smaller
            # device): for the bound it is a free move the page may or may not make
            hh = vh + np.where(pd_h, downc, 0.0) if sure_up else vh
            hd = vd + np.where(pd_d, downc, 0.0)
            if not sure_up and user.born is not None:   # (a birth may land on the host)
                hd = np.where(user.born[e], vd, hd)
            dh, dd = vh + np.where(pd_h, 0.0, upc), vd + np.where(pd_d, 0.0, upc)
        dev_before_h[e] = hd < hh
        dev_before_d[e] = dd <= dh
        vh = ch[e] + np.minimum(hh, hd)
        vd = cd[e] + np.minimum(dh, dd)
    on = np.zeros((E, U), bool)
    cur = vd < vh
    cost = np.minimum(vh, vd)
    for e in range(E - 1, -1, -1):
        on[e] = cur
        cur = np.where(cur, dev_before_d[e], dev_before_h[e])
    return on, cost


def _dp_dup(ch: np.ndarray, cd: np.ndarray, cx: np.ndarray, init_dev: np.ndarray, up: float,
            down: float, user: UserConstraints) -> np.ndarray:
    """:func:`_dp`'s bound (no vetoes, a user's move up may not happen) with a third state per
    page, a read-mostly duplicate (``cx[e, i]`` its epoch's cost, inf where there can be
    none): made from the host for ``up``, from the device for ``down + up``; it goes by a
    collapse, free (a write, an offline); a user's move home keeps it or not, one to the
    device takes the page itself there, and the user's prefetch may make one for free.
    Returns the cost per page."""
    E, U = ch.shape
    inf = np.inf
    vh = np.where(init_dev, inf, 0.0)
    vd = np.where(init_dev, 0.0, inf)
    vx = np.full(U, inf)
    for e in range(E):
        f = user.forced[e]
        anyq = np.minimum(np.minimum(vh, vd), vx)
        home, dev = f == HOST, f == DEVICE
        # after the user's move: home maps D to H (and X may stay); up may not happen
        wh = np.where(home, anyq, vh)
        wd = np.where(home, inf, np.where(dev, anyq, vd))
        wx = vx
        if user.born is not None:                   # (a birth may land on the host)
            wh = np.where(user.born[e], np.minimum(wh, vd), wh)
        if user.duplicated is not None:             # the user's duplicate (if it fits)
            wx = np.where(user.duplicated[e], np.minimum(wx, wh), wx)
        nh = np.minimum(np.minimum(wh, wd + down), wx) + ch[e]
        nd = np.minimum(np.minimum(wd, wh + up), wx + up) + cd[e]
        nx = np.minimum(np.minimum(wx, wh + up), wd + down + up) + cx[e]
        vh, vd, vx = nh, nd, nx
    return np.minimum(np.minimum(vh, vd), vx)


def plan_oracle(epochs: Sequence["Epoch"], profile: "Profile", page_size: int,
                device_frames: int, initial_node: np.ndarray, vpns: np.ndarray,
                cpu_access: str = "coherent", user: UserConstraints | None = None,
                score: "Callable[[np.ndarray], float] | None" = None,
                candidates: "Sequence[np.ndarray] | None" = None,
                either: np.ndarray | None = None,
                faults_home: np.ndarray | None = None) -> OracleSchedule:
    """Plan the schedule for pages ``vpns`` (sorted) starting on ``initial_node``.

    ``cpu_access`` is the space's (tunable ``cpu_access``): under ``"migrate_on_cpu_fault"`` a
    page the CPU touches in an epoch cannot stay on the device for it (the space would fault it
    home), so the schedule has it on the host for that epoch, moved there beforehand.

    ``user`` holds what the trace's own placement actions impose (see
    :class:`UserConstraints`): the user's moves are free teleports that every policy gets, and
    no page is on an offline device, so both shape the bound as well as the schedule; the
    manager's refusals (pins, hints) and its moves to preferred locations shape the schedule
    only, so that the bound, which relaxes them, stays one for every policy (a mandatory move
    is never refused; ``static`` makes no move to a preferred location).

    ``score(on_device)``, when given, is the modeled seconds a schedule really makes (a
    replay of it: :func:`ccadgpu.replay.oracle_schedule` passes one); the planner then weighs
    several schedules under the user's actions, ``candidates`` among them, and reports the
    best one's score as ``planned_cost``.  Without it, it plans one: the user's moves and the
    hints' taken as made.

    ``either`` marks pages that may start on either node (allocated on the device, which
    may or may not have room then): the bound lets them start where they cost less; the
    schedule starts them on ``initial_node``.

    ``faults_home[e]``: whether a CPU touch of a device page brings it home in epoch ``e``
    (default: ``cpu_access`` throughout); a run that changed ``cpu_access`` or turned
    migration off (which refuses those faults) says so epoch by epoch.

    A read-mostly page (``user.read_mostly``) may have a copy on each node: the bound gives
    it a third state, the duplicate (:func:`_dp_dup`); the planner also weighs the schedule
    that takes "on the device" for a duplicate there (the CPU's traffic local to the host,
    the device's to the device)."""
    if cpu_access not in ("coherent", "migrate_on_cpu_fault"):
        raise InvalidArgumentError(f"cpu_access must be 'coherent' or 'migrate_on_cpu_fault', "
                                   f"got {cpu_access!r}")
    vpns = np.asarray(vpns, np.int64)
    ch, cd = _costs(epochs, vpns, profile)
    E, U = ch.shape
    if user is not None and (user.forced.shape != ch.shape or user.offline.shape != (E,)):
        raise InvalidArgumentError(f"user constraints of shape {user.forced.shape} do not fit "
                                   f"{E} epochs over {U} pages")
    for name, a, shape in (("either", either, (U,)), ("faults_home", faults_home, (E,)),
                           *(("a candidate", c, (E, U)) for c in candidates or ())):
        if a is not None and np.shape(a) != shape:
            raise InvalidArgumentError(f"plan_oracle: {name} has shape {np.shape(a)}, "
                                       f"not {shape} ({E} epochs over {U} pages)")
    up = page_size / profile.link[HOST, DEVICE] + profile.per_page
    down = page_size / profile.link[DEVICE, HOST] + profile.per_page
    # dearer than any whole schedule that keeps the page on the host (always allowed), so
    # no optimum and no capacity price ever puts a page on the device for such an epoch
    forbid = float(ch.sum() + cd.sum()) + (up + down) * (len(epochs) + 1) + 1.0
    if faults_home is None:
        faults_home = np.full(len(epochs), cpu_access == "migrate_on_cpu_fault")
    if np.asarray(faults_home).any():
        for e, ep in enumerate(epochs):
            if len(ep.vpns) and faults_home[e]:
                i = np.searchsorted(vpns, ep.vpns[ep.touched_by(CPU_PROC)])
                if user is not None and user.pinned is not None:
                    i = i[~user.pinned[e, i]]      # stays, read remotely
                cd[e, i] += forbid
    if user is not None:
        cd[user.offline] += forbid
    init_dev = np.asarray(initial_node) == DEVICE
    both = dup = None
    if user is not None and user.read_mostly is not None:
        floor, both = _split_costs(epochs, vpns, profile)
        # a duplicate's epoch: each processor's traffic at its cheaper node at most (a write
        # collapses it first); none while the device is offline
        dup = np.where(user.read_mostly & ~user.offline[:, None], floor, np.inf)

    def bound(start: np.ndarray) -> np.ndarray:
        if dup is None:
            return _dp(ch, cd, start, up, down, user, vetoes=False)[1]
        return _dp_dup(ch, cd, dup, start, up, down, user)
    if dup is None:       # (its schedule is the plan's when there are no user actions)
        on, cost = _dp(ch, cd, init_dev, up, down, user, vetoes=False)
    else:
        on, cost = None, bound(init_dev)
    low = cost
    if either is not None and either.any():    # (pages are independent in the bound)
        for start in (init_dev | either, init_dev & ~either):
            low = np.where(either, np.minimum(low, bound(start)), low)
    # placement-independent terms, so that the bound compares with whole modeled times: launch
    # overheads, and for each processor active in an epoch its smallest latency
    fixed = sum((profile.launch if ep.launch else 0.0) +
                sum(float(profile.latency[p].min()) for p in range(ep.sectors.shape[1])
                    if ep.sectors[:, p, :].any()) for ep in epochs)
    lower = float(low.sum()) + fixed
    # with no user actions the bound's optimum is the schedule's, capacity aside
    on, lam, planned = _schedule(ch, cd, forbid, init_dev, up, down, device_frames, user,
                                 (on, cost) if user is None else None, score, candidates,
                                 fixed, both)
    return OracleSchedule(vpns, on, lower, planned, lam)


@dataclass
class _Plan:
    """A candidate schedule, with what it was planned under."""
    on: np.ndarray
    lam: float
    cost: float                # modeled seconds: its score, else its traffic and moves
    ch: np.ndarray             # the per-page costs it was planned with
    cd: np.ndarray
    sure_up: bool              # planned as if every user's move to the device took place


def _schedule(ch: np.ndarray, cd: np.ndarray, forbid: float, init_dev: np.ndarray, up: float,
              down: float, cap: int, user: UserConstraints | None,
              optimum: tuple[np.ndarray, np.ndarray] | None,
              score: "Callable[[np.ndarray], float] | None",
              candidates: "Sequence[np.ndarray] | None", fixed: float,
              both: np.ndarray | None = None) -> tuple[np.ndarray, float, float]:
    """The schedule, as (on_device, lambda, modeled seconds): with ``score`` and user
    actions its score, else its traffic and moves plus the placement-independent ``fixed``.

    The user's moves to the device, and the manager's to a page's preferred location, take
    pages only while the device has room.  So with ``score`` the schedule is the best scored
    of: following them all, or as it likes (where a full device may make that come true),
    with the hints' moves as the manager makes them or left to it (and, given ``both``, the
    traffic of read-mostly pages with a duplicate, taken for "on the device"); the best of
    those planned again with the user's moves that find room under it; ``candidates``; and
    then, where the moves would bring pages it does not want, filling the device with pages
    worth having there just before, so that they find no room (:func:`_block`)."""
    hard = (ch, cd)
    if user is not None and (user.hinted >= 0).any():      # the hints' moves as made
        hard = (ch + np.where(user.hinted == DEVICE, forbid, 0.0),
                cd + np.where(user.hinted == HOST, forbid, 0.0))
    weigh = score is not None and user is not None

    def price(on: np.ndarray) -> float:
        if weigh:
            return score(on)
        return float(_page_costs(on, ch, cd, init_dev, up, down,
                                 None if user is None else user.forced).sum()) + fixed

    def fit(sch: np.ndarray, scd: np.ndarray, sure: bool, done: tuple | None = None,
            u: UserConstraints | None = user) -> _Plan:
        on, cost = done if done is not None else _dp(sch, scd, init_dev, up, down, u,
                                                     sure_up=sure)
        lam = 0.0
        if len(on) and on.sum(axis=1).max() > cap:
            on, lam = _capacitated(sch, scd, init_dev, up, down, on, cost, cap, u, sure)
        return _Plan(on, lam, price(on), sch, scd, sure)
    if not weigh:
        best = fit(*hard, True, optimum)
        return best.on, best.lam, best.cost
    variants = [(*hard, True)] + ([(ch, cd, True)] if hard[0] is not ch else [])
    if both is not None and user.read_mostly is not None:
        variants.append((hard[0], np.where(user.read_mostly & ~user.offline[:, None], both,
                                           hard[1]), True))
    if (user.forced == DEVICE).any():
        variants += [(c, d, False) for c, d, _ in variants]
    plans = [fit(*v) for v in variants]
    plans += [_Plan(on, 0.0, price(on), ch, cd, True) for on in candidates or ()]
    best = min(plans, key=lambda c: c.cost)
    if (user.forced == DEVICE).any() or (user.hinted == DEVICE).any():
        for _ in range(2):   # planned again knowing which of the user's moves find room
            forced = _realised(best.on, user, init_dev, cap)[0]
            if (forced == user.forced).all():
                break
            again = fit(best.ch, best.cd, True, None, dataclasses.replace(user, forced=forced))
            if again.cost >= best.cost:
                break
            best = again
        best = _block(best, fit, user, init_dev, up, down, cap)
    return best.on, best.lam, best.cost


def _realised(on: np.ndarray, user: UserConstraints, init_dev: np.ndarray, cap: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """``user.forced`` and ``user.hinted`` as they happen under schedule ``on``, roughly (the
    planner's guide; a replay scores): before each epoch the user's moves, then the manager's
    step, whose moves home (the schedule's) come before its moves to the device (the hints');
    a move to the device takes pages in page order while it has room, the rest stay."""
    forced, hinted = user.forced.copy(), user.hinted.copy()
    for e in np.flatnonzero(((forced == DEVICE) | (hinted == DEVICE)).any(axis=1)).tolist():
        there = (init_dev if e == 0 else on[e - 1]).copy()
        for moves, after in ((forced[e], None), (hinted[e], on[e] | user.no_down[e])):
            there &= moves != HOST
            if after is not None:      # the manager's step: every move home comes first
                there &= after
            new = np.flatnonzero((moves == DEVICE) & ~there)
            room = max(0, cap - int(there.sum()))
            moves[new[room:]] = -1
            there[new[:room]] = True
    return forced, hinted


def _block(best: _Plan, fit, user: UserConstraints, init_dev: np.ndarray, up: float,
           down: float, cap: int, tries: int = 4) -> _Plan:
    """``best``, improved where the user's or the hints' moves bring the device pages the
    schedule sends back at once: for the worst few such epochs ``e``, a reward per page on the
    device during ``e - 1`` (bisected: the smallest that fills the device but for the pages
    the schedule wants from those moves) keeps them out, when that costs less than their
    round trip."""
    forced, hinted = _realised(best.on, user, init_dev, cap)
    unwanted = ((forced == DEVICE) | (hinted == DEVICE)) & ~best.on
    unwanted[0] = False                        # before the first epoch: nothing to fill
    rows = np.flatnonzero(unwanted.any(axis=1))
    rows = rows[np.argsort(-unwanted[rows].sum(axis=1), kind="stable")][:tries]
    for e in rows.tolist():
        ups = (user.forced[e] == DEVICE) | (user.hinted[e] == DEVICE)
        wanted = ups & best.on[e]
        stays = ~(ups & ~best.on[e]) & (user.forced[e] != HOST) & (user.hinted[e] != HOST)
        base = best

        def rewarded(r: float) -> np.ndarray:
            c = base.cd.copy()
            c[e - 1, stays] -= r
            return c

        def full(r: float) -> bool:            # (the capacity aside: a trim comes after)
            prev = _dp(base.ch, rewarded(r), init_dev, up, down, user,
                       sure_up=base.sure_up)[0][e - 1]
            return int((prev & stays).sum() + (wanted & ~prev).sum()) >= cap
        hi = up + down + 1e-12
        for _ in range(16):
            if full(hi):
                break
            hi *= 4
        else:
            continue
        lo = 0.0
        for _ in range(20):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if full(mid) else (mid, hi)
        cand = fit(base.ch, rewarded(hi), base.sure_up)
        if cand.cost >= best.cost:     # (the worst epoch first: if filling it does not
            break                      # pay, a lesser one seldom does)
        best = cand
    return best


def _capacitated(ch: np.ndarray, cd: np.ndarray, init_dev: np.ndarray, up: float, down: float,
                 on: np.ndarray, cost: np.ndarray, cap: int, user: UserConstraints | None,
                 sure_up: bool = True) -> tuple[np.ndarray, float]:
    """A capacity-feasible schedule: the better of (a) a Lagrangian price per device page and
    epoch, found by bisection, then trimmed, and (b) a greedy knapsack over pages that admits
    whole per-page optimal schedules by savings per device-epoch while every epoch has room.
    (A trim or a page left on the host may be one the manager then refuses to move: the
    replay reports what the schedule really cost.)"""
    forced = None if user is None else \
        user.forced if sure_up else np.where(user.forced == DEVICE, -1, user.forced)

    def dp(price: float) -> np.ndarray:
        return _dp(ch, cd + price, init_dev, up, down, user, sure_up=sure_up)[0]

    def total(o: np.ndarray) -> float:
        return float(_page_costs(o, ch, cd, init_dev, up, down, forced).sum())
    cands = []
    # (a) Lagrangian
    hi = float(max(ch.max(), cd.max(), up, down)) * 4 + 1e-12
    for _ in range(60):
        if dp(hi).sum(axis=1).max() <= cap:
            break
        hi *= 2
    lo = 0.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if dp(mid).sum(axis=1).max() <= cap:
            hi = mid
        else:
            lo = mid
    a = dp(hi)
    for e in np.flatnonzero(a.sum(axis=1) > cap):
        idx = np.flatnonzero(a[e])
        drop = idx[np.argsort(ch[e, idx] - cd[e, idx], kind="stable")[: len(idx) - cap]]
        a[e, drop] = False
    cands.append((a, hi))
    # (b) greedy knapsack over pages: each page either follows its optimal schedule or stays
    # on the host throughout
    all_host = _page_costs(np.zeros_like(on), ch, cd, init_dev, up, down, forced)
    saving = all_host - cost
    used = on.sum(axis=0)
    order = np.argsort(-(saving / np.maximum(used, 1)), kind="stable")
    b = np.zeros_like(on)
    load = np.zeros(on.shape[0], np.int64)
    for i in order[saving[order] > 0]:
        col = on[:, i]
        if (load[col] < cap).all():
            b[:, i] = col
            load += col
    cands.append((b, 0.0))
    return min(cands, key=lambda c: total(c[0]))


def _page_costs(on: np.ndarray, ch: np.ndarray, cd: np.ndarray, init_dev: np.ndarray,
                up: float, down: float, forced: np.ndarray | None = None) -> np.ndarray:
    """Per page, schedule ``on``'s traffic and the policy's moves (after the user's moves
    ``forced``, ``UserConstraints.forced``'s form), every move made as planned."""
    if len(on) == 0:
        return np.zeros(on.shape[1])
    prev = np.vstack((init_dev[None, :], on[:-1]))
    if forced is not None:
        prev = np.where(forced >= 0, forced == DEVICE, prev)
    acc = np.where(on, cd, ch).sum(axis=0)
    return acc + (on & ~prev).sum(axis=0) * up + (~on & prev).sum(axis=0) * down


class Oracle(Policy):
    """Replays an :class:`OracleSchedule`: before epoch ``e`` it moves pages to where the
    schedule wants them (cause ``prefetch``).  Build it with :func:`plan_oracle`, or let
    :func:`ccadgpu.replay.replay` do it from the trace being replayed."""
    name = "oracle"
    evicts = False

    def __init__(self, schedule: OracleSchedule | None = None) -> None:
        if schedule is None:
            raise ValueError("the oracle needs a schedule planned from a recorded trace: use "
                             "ccadgpu.replay.replay(trace, 'oracle') or plan_oracle(...)")
        self.schedule = schedule

    def params(self) -> dict:
        return {"lower_bound": self.schedule.lower_bound, "lambda": self.schedule.lam}

    def would_fault(self, ctx: "PolicyContext", ep: "Epoch") -> bool:
        return False        # its moves follow the recorded epochs: splitting one would shift them

    def fault(self, ctx: "PolicyContext", ep: "Epoch") -> list[Move]:
        s = self.schedule
        if ctx.epoch >= len(s.on_device):
            return []
        want = s.on_device[ctx.epoch]
        cur = ctx.node[s.vpns] == DEVICE
        return [Move(s.vpns[cur & ~want], HOST, "prefetch"),
                Move(s.vpns[want & ~cur], DEVICE, "prefetch")]
