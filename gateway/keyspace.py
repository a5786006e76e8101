"""Valkey key names. Everything of one account shares the hash tag ``{a:<account_id>}``.

Lua scripts only ever touch one account's keys, so they run unchanged on Valkey Cluster.
The few global keys (email and key-id indexes, the plan catalog) are read outside Lua.
"""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "antex"

# Global, untagged: looked up on cold paths only (auth cache miss, admin operations).
EMAIL_INDEX = f"{PREFIX}:email:"  # + email -> account id
KEY_INDEX = f"{PREFIX}:keyidx:"  # + key id -> account id
ACCOUNTS = f"{PREFIX}:accounts"  # set of account ids
PLANS = f"{PREFIX}:plans"  # hash plan name -> plan JSON
ADMIN_TOKENS = f"{PREFIX}:admintokens"  # hash token digest -> JSON metadata
QUARANTINE_INDEX = f"{PREFIX}:quarantined"  # zset "<account>:<key>" -> quarantined at ms
INVALIDATE_CHANNEL = f"{PREFIX}:invalidate"  # pub/sub: key ids whose cached auth must drop
PUBLIC_URL = f"{PREFIX}:public_url"  # the serving gateway's ANTEX_PUBLIC_URL, set at start
DELETION_REQUESTS = f"{PREFIX}:deletion_requests"  # zset account id -> asked at ms
DELETIONS_DONE = f"{PREFIX}:deletions_done"  # hash sha256(email) -> JSON {requested_ms, done_ms}


def email_key(email: str) -> str:
    return EMAIL_INDEX + email.strip().lower()


def key_index(key_id: str) -> str:
    return KEY_INDEX + key_id


@dataclass(frozen=True, slots=True)
class AccountKeys:
    """The keys of one account; build once per account id and reuse."""

    account_id: str

    @property
    def tag(self) -> str:
        return f"{PREFIX}:{{a:{self.account_id}}}"

    @property
    def account(self) -> str:
        """Hash: email, plan, limit_5h, limit_7d (milli-credits), ip_slots, concurrency,
        max_keys, period_end_ms, status, extra_ip_slots, keys_extra_ip_slots (sum of the
        keys' own extra slots), shared_flag_ms, shared_flag_reason, created_ms."""
        return f"{self.tag}:acct"

    @property
    def keys(self) -> str:
        """Set of the account's key ids."""
        return f"{self.tag}:keys"

    def key(self, key_id: str) -> str:
        """Hash: hash (bcrypt), name, prefix, created_ms, last_used_ms, status
        (active|revoked|quarantined), quarantine_reason, extra_ip_slots."""
        return f"{self.tag}:key:{key_id}"

    def key_ips(self, key_id: str) -> str:
        """Hash: bound ip tag -> bound at ms."""
        return f"{self.tag}:ips:{key_id}"

    def key_denied(self, key_id: str) -> str:
        """Zset: ip tag refused for lack of a slot -> last refusal ms (leak signal)."""
        return f"{self.tag}:denied:{key_id}"

    def key_failures(self, key_id: str) -> str:
        """Zset: "<ip tag>#<attempt id>" -> ms of each failed secret (brute-force signal)."""
        return f"{self.tag}:fail:{key_id}"

    def key_failure_alert(self, key_id: str) -> str:
        """String: set for one period after a wrong-secrets event, so one burst alerts once."""
        return f"{self.tag}:failalert:{key_id}"

    @property
    def networks(self) -> str:
        """Zset: ip tag any key of the account was used from -> last seen ms, pruned to the
        key-sharing period (the sharing signal)."""
        return f"{self.tag}:nets"

    @property
    def window_5h_amounts(self) -> str:
        """Hash: "<bucket start ms>" -> milli-credits, plus ``total`` (their sum) and ``head``
        (the oldest bucket start). One hash per window keeps an account's memory small."""
        return f"{self.tag}:w5:amt"

    @property
    def window_7d_amounts(self) -> str:
        return f"{self.tag}:w7:amt"

    @property
    def inflight(self) -> str:
        """Zset: request id -> reservation expiry ms."""
        return f"{self.tag}:inflight"

    @property
    def reserved(self) -> str:
        """Hash: request id -> reserved milli-credits; field ``total`` holds the sum."""
        return f"{self.tag}:reserved"

    @property
    def settled(self) -> str:
        """Zset: settled or released request id -> ms until which a repeat is ignored."""
        return f"{self.tag}:settled"

    @property
    def log(self) -> str:
        """Stream, capped: per-request usage metadata (never content)."""
        return f"{self.tag}:log"

    @property
    def events(self) -> str:
        """Stream, capped: quarantine and security events (time, reason, IPs)."""
        return f"{self.tag}:events"

    @property
    def daily(self) -> str:
        """Hash, pruned to 7 days by settle: ``h:<hours since epoch>`` -> milli-credits and
        ``d:<days since epoch>:<model>:{n,in,out,cr,cw,mc}`` -> counts, for dashboard charts."""
        return f"{self.tag}:hourly"
