"""Invented GitHub Archive events: a deterministic generator.

:func:`generate_events` invents events offline, in the shape of the real ones
(``id``, ``type``, ``actor``, ``repo``, ``payload``, ``public``, ``created_at``
and, for organisation repos, ``org``), with a realistic mix of event types,
Zipf-distributed repository popularity that drifts from hour to hour, and
timestamps that advance at about :data:`DEFAULT_RATE` events per simulated
second. The same seed gives the same events.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Iterator
from datetime import datetime
from typing import Any, NamedTuple

from wallaroo.demo.gharchive import DEFAULT_START, format_created_at, parse_start

__all__ = ["DEFAULT_RATE", "DEFAULT_REPOS", "EVENT_TYPE_WEIGHTS", "generate_events"]

#: Mean generated events per simulated second (the GitHub of 2017 made about 10-40).
DEFAULT_RATE = 24.0

#: Repositories the generator invents when not told otherwise.
DEFAULT_REPOS = 20_000

#: Share of each event type in generated streams, after the GitHub Archive of 2017.
EVENT_TYPE_WEIGHTS: dict[str, float] = {
    "PushEvent": 0.50,
    "WatchEvent": 0.12,
    "CreateEvent": 0.11,
    "PullRequestEvent": 0.065,
    "IssueCommentEvent": 0.065,
    "ForkEvent": 0.035,
    "IssuesEvent": 0.035,
    "DeleteEvent": 0.025,
    "PullRequestReviewCommentEvent": 0.02,
    "ReleaseEvent": 0.007,
    "GollumEvent": 0.006,
    "MemberEvent": 0.005,
    "CommitCommentEvent": 0.005,
    "PublicEvent": 0.002,
}

#: Types whose repository is drawn from the steep star popularity; the others
#: (pushes, branches, wiki edits...) from a flatter activity distribution.
_ATTENTION_TYPES = frozenset(
    {
        "WatchEvent",
        "ForkEvent",
        "PullRequestEvent",
        "IssuesEvent",
        "IssueCommentEvent",
        "PullRequestReviewCommentEvent",
        "ReleaseEvent",
    }
)

#: Flattens the very top of star popularity: the favourite repository gets about 3%
#: of the stars rather than 15%, as in the archive's busy hours.
_STAR_RANK_OFFSET = 5.0


# -- the generator ----------------------------------------------------------------

_SYLLABLES = (
    "al an ar ba be bo ca chi da de do el en fa fi ga go ha hi ja jo ka ki ko la le li "
    "lu ma me mi mo na ne ni no pa pe ra re ri ro sa se si so ta te ti to va vi wa xi "
    "ya yu za zo"
).split()
_NAME_PREFIXES = (
    "awesome fast tiny simple py go rust node react vue open deep micro hyper super "
    "easy smart cloud data web"
).split()
_NAME_STEMS = (
    "json http router cache parser cli db ui kit lang ml vision bot chat queue stream "
    "auth lint test build deploy game shell editor notes blog graph crypto maps docs"
).split()
_NAME_SUFFIXES = (
    "",
    "",
    "",
    "",
    "-js",
    "-py",
    "-rs",
    "-go",
    ".js",
    "-cli",
    "-server",
    "-client",
    "-core",
    "-app",
    "-tools",
    "-examples",
)
_LANGUAGES = (
    "JavaScript",
    "Python",
    "Java",
    "Go",
    "C++",
    "Ruby",
    "PHP",
    "TypeScript",
    "C",
    "Shell",
    "Rust",
    None,
)
_COMMIT_MESSAGES = (
    "Fix typo in README",
    "Update dependencies",
    "Add tests for {stem}",
    "Refactor {stem} module",
    "Initial commit",
    "Bump version to {major}.{minor}.{patch}",
    "Fix {stem} crash on empty input",
    "Merge branch 'master' into {branch}",
    "WIP",
    "Update .travis.yml",
    "Improve {stem} docs",
    "Remove unused {stem} code",
)
_TITLES = (
    "Add {stem} support",
    "Fix {stem} crash on empty input",
    "Update README.md",
    "Improve {stem} performance",
    "{stem} does not work on Windows",
    "Question about {stem}",
    "Document the {stem} options",
)
_COMMENTS = (
    "Thanks! :+1:",
    "LGTM",
    "Could you add a test for this?",
    "I can reproduce this on the latest release.",
    "Fixed in #{number}.",
    "Any update on this?",
    "Closing as duplicate.",
)


class _Account(NamedTuple):
    id: int
    login: str


class _Repo(NamedTuple):
    id: int
    name: str
    owner: _Account
    org: _Account | None
    language: str | None


def _zipf_cdf(n: int, exponent: float, offset: float = 0.0) -> list[float]:
    """Cumulative weights of ranks 1..n under Zipf-Mandelbrot: ``1 / (rank + offset) ** s``."""
    return list(
        itertools.accumulate(1.0 / ((rank + offset) ** exponent) for rank in range(1, n + 1))
    )


def _unique_logins(rng: random.Random, count: int, taken: set) -> list[str]:
    """``count`` new logins such as ``kalimo``, ``dera42`` or ``sovi-dev``."""
    logins = []
    tails = ("-dev", "-bot", "hq", "-io")
    while len(logins) < count:
        login = "".join(rng.choices(_SYLLABLES, k=2 + int(rng.random() * 3)))
        tail = rng.random()
        if tail < 0.3:
            login += str(1 + int(tail / 0.3 * 999))
        elif tail < 0.33:
            login += tails[int((tail - 0.3) / 0.03 * len(tails)) % len(tails)]
        if login not in taken:
            taken.add(login)
            logins.append(login)
    return logins


class _World:
    """The accounts and repositories of one generated stream, and what happens next."""

    def __init__(
        self,
        rng: random.Random,
        repos: int,
        users: int,
        zipf: float,
        activity_zipf: float,
    ) -> None:
        self.rng = rng
        taken: set = set()
        user_ids = rng.sample(range(1_000, 25_000_000), users)
        self.users = [
            _Account(i, login) for i, login in zip(user_ids, _unique_logins(rng, users, taken))
        ]
        org_count = max(1, users // 20)
        org_ids = rng.sample(range(25_000_000, 30_000_000), org_count)
        self.orgs = [
            _Account(i, login) for i, login in zip(org_ids, _unique_logins(rng, org_count, taken))
        ]
        repo_ids = sorted(rng.sample(range(1_000, 80_000_000), repos))
        names: set = set()
        self.repos: list[_Repo] = []
        for repo_id in repo_ids:
            org = rng.choice(self.orgs) if rng.random() < 0.3 else None
            owner = org if org is not None else self.users[rng.randrange(users)]
            while True:
                stem = rng.choice(_NAME_STEMS)
                short = stem if rng.random() < 0.4 else f"{rng.choice(_NAME_PREFIXES)}-{stem}"
                short += rng.choice(_NAME_SUFFIXES)
                full = f"{owner.login}/{short}"
                if full not in names:
                    names.add(full)
                    break
                owner = self.users[rng.randrange(users)]
                org = None
            self.repos.append(_Repo(repo_id, full, owner, org, rng.choice(_LANGUAGES)))
        #: rank -> repo index, for stars and discussions (drifts every simulated hour)
        self.attention = list(range(repos))
        rng.shuffle(self.attention)
        #: rank -> repo index, for pushes and other owner activity
        self.activity = list(range(repos))
        rng.shuffle(self.activity)
        self.attention_cdf = _zipf_cdf(repos, zipf, _STAR_RANK_OFFSET)
        self.activity_cdf = _zipf_cdf(repos, activity_zipf)
        self.user_cdf = _zipf_cdf(users, 0.8)
        types = list(EVENT_TYPE_WEIGHTS)
        self.types = types
        self.type_cdf = list(itertools.accumulate(EVENT_TYPE_WEIGHTS[t] for t in types))
        self.numbers: dict[int, int] = {}
        self.next_repo_id = 80_000_000
        self.next_object_id = 100_000_000

    # -- draws ------------------------------------------------------------------

    def pick(self, cdf: list[float]) -> int:
        return min(bisect.bisect_left(cdf, self.rng.random() * cdf[-1]), len(cdf) - 1)

    def event_type(self) -> str:
        return self.types[self.pick(self.type_cdf)]

    def repo(self, event_type: str) -> _Repo:
        if event_type in _ATTENTION_TYPES:
            return self.repos[self.attention[self.pick(self.attention_cdf)]]
        return self.repos[self.activity[self.pick(self.activity_cdf)]]

    def user(self) -> _Account:
        return self.users[self.pick(self.user_cdf)]

    def drift(self) -> None:
        """A new hour: some repositories start trending, others cool down."""
        rng = self.rng
        n = len(self.attention)
        hot = max(1, min(50, n // 10))
        for _ in range(min(5, hot)):
            i = rng.randrange(hot)
            j = rng.randrange(hot, max(hot + 1, min(n, 2_000)))
            if j < n:
                self.attention[i], self.attention[j] = self.attention[j], self.attention[i]

    def object_id(self) -> int:
        self.next_object_id += self.rng.randint(1, 50)
        return self.next_object_id

    def number(self, repo: _Repo, new: bool) -> int:
        last = self.numbers.get(repo.id)
        if last is None:
            last = self.rng.randint(1, 400)
        if new:
            last += 1
        self.numbers[repo.id] = last
        return last if new else self.rng.randint(1, last)

    def sha(self) -> str:
        return f"{self.rng.getrandbits(160):040x}"


def _actor(account: _Account) -> dict:
    return {
        "id": account.id,
        "login": account.login,
        "display_login": account.login,
        "gravatar_id": "",
        "url": f"https://api.github.com/users/{account.login}",
        "avatar_url": f"https://avatars.githubusercontent.com/u/{account.id}?",
    }


def _org(account: _Account) -> dict:
    return {
        "id": account.id,
        "login": account.login,
        "gravatar_id": "",
        "url": f"https://api.github.com/orgs/{account.login}",
        "avatar_url": f"https://avatars.githubusercontent.com/u/{account.id}?",
    }


def _user(account: _Account) -> dict:
    return {
        "login": account.login,
        "id": account.id,
        "avatar_url": f"https://avatars.githubusercontent.com/u/{account.id}?v=3",
        "gravatar_id": "",
        "url": f"https://api.github.com/users/{account.login}",
        "html_url": f"https://github.com/{account.login}",
        "type": "User",
        "site_admin": False,
    }


class _Payloads:
    """Builds the ``payload`` of each event type."""

    def __init__(self, world: _World) -> None:
        self.w = world
        self.rng = world.rng

    def words(self) -> dict:
        rng = self.rng
        return {
            "stem": rng.choice(_NAME_STEMS),
            "branch": self.branch(),
            "major": rng.randint(0, 3),
            "minor": rng.randint(0, 20),
            "patch": rng.randint(0, 9),
            "number": rng.randint(1, 900),
        }

    def branch(self) -> str:
        rng = self.rng
        r = rng.random()
        if r < 0.55:
            return "master"
        if r < 0.65:
            return "develop"
        if r < 0.8:
            return f"feature/{rng.choice(_NAME_STEMS)}"
        if r < 0.9:
            return f"patch-{rng.randint(1, 30)}"
        return f"fix-{rng.choice(_NAME_STEMS)}"

    def text(self, templates: tuple) -> str:
        return self.rng.choice(templates).format(**self.words())

    def build(self, kind: str, repo: _Repo, actor: _Account, ts: str) -> dict:
        return getattr(self, kind)(repo, actor, ts)

    def WatchEvent(self, repo: _Repo, actor: _Account, ts: str) -> dict:
        return {"action": "started"}

    def ForkEvent(self, repo: _Repo, actor: _Account, ts: str) -> dict:
        short = repo.name.split("/", 1)[1]
        full = f"{actor.login}/{short}"
        self.w.next_repo_id += self.rng.randint(1, 20)
        return {
            "forkee": {
                "id": self.w.next_repo_id,
                "name": short,
                "full_name": full,
                "owner": _user(actor),
                "private": False,
                "html_url": f"https://github.com/{full}",
                "description": f"A {short} fork",
                "fork": True,
                "url": f"https://api.github.com/repos/{full}",
                "created_at": ts,
                "updated_at": ts,
                "pushed_at": ts,
                "homepage": None,
                "size": self.rng.randint(10, 50_000),
                "stargazers_count": 0,
                "watchers_count": 0,
                "language": None,
                "forks_count": 0,
                "open_issues_count": 0,
                "default_branch": "master",
                "public": True,
            }
        }

    def pull_request(self, repo: _Repo, actor: _Account, ts: str, number: int, action: str):
        rng = self.rng
        closed = action == "closed"
        merged = closed and rng.random() < 0.7
        return {
            "url": f"https://api.github.com/repos/{repo.name}/pulls/{number}",
            "id": self.w.object_id(),
            "html_url": f"https://github.com/{repo.name}/pull/{number}",
            "number": number,
            "state": "closed" if closed else "open",
            "locked": False,
            "title": self.text(_TITLES),
            "user": _user(actor),
            "body": "",
            "created_at": ts,
            "updated_at": ts,
            "closed_at": ts if closed else None,
            "merged_at": ts if merged else None,
            "merged": merged,
            "head": {"ref": self.branch(), "sha": self.w.sha()},
            "base": {"ref": "master", "sha": self.w.sha()},
            "commits": rng.randint(1, 6),
            "additions": rng.randint(0, 400),
            "deletions": rng.randint(0, 200),
            "changed_files": rng.randint(1, 12),
        }

    def PullRequestEvent(self, repo: _Repo, actor: _Account, ts: str) -> dict:
        r = self.rng.random()
        action = "opened" if r < 0.5 else "closed" if r < 0.97 else "reopened"
        number = self.w.number(repo, new=action == "opened")
        return {
            "action": action,
            "number": number,
            "pull_request": self.pull_request(repo, actor, ts, number, action),
        }

    def PushEvent(self, repo: _Repo, actor: _Account, ts: str) -> dict:
        rng = self.rng
        r = rng.random()
        if r < 0.7:
            size = 1
        elif r < 0.82:
            size = 2
        else:
            size = rng.randint(3, 5) if r < 0.94 else rng.randint(6, 40)
        commits = []
        for _ in range(min(size, 20)):  # the archive lists at most 20 commits
            sha = self.w.sha()
            commits.append(
                {
                    "sha": sha,
                    "author": {
                        "email": f"{actor.login}@users.noreply.github.com",
                        "name": actor.login,
                    },
                    "message": self.text(_COMMIT_MESSAGES),
                    "distinct": True,
                    "url": f"https://api.github.com/repos/{repo.name}/commits/{sha}",
                }
            )
        return {
            "push_id": self.w.object_id(),
            "size": size,
            "distinct_size": size,
            "ref": f"refs/heads/{self.branch()}",
            "head": commits[-1]["sha"],
            "before": self.w.sha(),
            "commits": commits,
        }

    def issue(self, repo: _Repo, actor: _Account, ts: str, number: int, state: str) -> dict:
        return {
            "url": f"https://api.github.com/repos/{repo.name}/issues/{number}",
            "repository_url": f"https://api.github.com/repos/{repo.name}",
            "html_url": f"https://github.com/{repo.name}/issues/{number}",
            "id": self.w.object_id(),
            "number": number,
            "title": self.text(_TITLES),
            "user": _user(actor),
            "labels": [],
            "state": state,
            "locked": False,
            "assignee": None,
            "comments": self.rng.randint(0, 12),
            "created_at": ts,
            "updated_at": ts,
            "closed_at": ts if state == "closed" else None,
            "body": "",
        }

    def IssuesEvent(self, repo: _Repo, actor: _Account, ts: str) -> dict:
        r = self.rng.random()
        action = "opened" if r < 0.6 else "closed" if r < 0.97 else "reopened"
        number = self.w.number(repo, new=action == "opened")
        state = "closed" if action == "closed" else "open"
        return {"action": action, "issue": self.issue(repo, actor, ts, number, state)}

    def comment(self, repo: _Repo, actor: _Account, ts: str, path: str) -> dict:
        comment_id = self.w.object_id()
        return {
            "url": f"https://api.github.com/repos/{repo.name}/{path}/comments/{comment_id}",
            "html_url": f"https://github.com/{repo.name}#comment-{comment_id}",
            "id": comment_id,
            "user": _user(actor),
            "created_at": ts,
            "updated_at": ts,
            "body": self.text(_COMMENTS),
        }

    def IssueCommentEvent(self, repo: _Repo, actor: _Account, ts: str) -> dict:
        number = self.w.number(repo, new=False)
        return {
            "action": "created",
            "issue": self.issue(repo, self.w.user(), ts, number, "open"),
            "comment": self.comment(repo, actor, ts, "issues"),
        }

    def PullRequestReviewCommentEvent(self, repo: _Repo, actor: _Account, ts: str) -> dict:
        number = self.w.number(repo, new=False)
        comment = self.comment(repo, actor, ts, "pulls")
        comment["path"] = f"src/{self.rng.choice(_NAME_STEMS)}.py"
        comment["commit_id"] = self.w.sha()
        return {
            "action": "created",
            "comment": comment,
            "pull_request": self.pull_request(repo, self.w.user(), ts, number, "opened"),
        }

    def CreateEvent(self, repo: _Repo, actor: _Account, ts: str) -> dict:
        r = self.rng.random()
        if r < 0.35:
            ref, ref_type = None, "repository"
        elif r < 0.9:
            ref, ref_type = self.branch(), "branch"
        else:
            ref, ref_type = f"v{self.rng.randint(0, 3)}.{self.rng.randint(0, 20)}.0", "tag"
        return {
            "ref": ref,
            "ref_type": ref_type,
            "master_branch": "master",
            "description": None,
            "pusher_type": "user",
        }

    def DeleteEvent(self, repo: _Repo, actor: _Account, ts: str) -> dict:
        if self.rng.random() < 0.88:
            return {"ref": self.branch(), "ref_type": "branch", "pusher_type": "user"}
        return {"ref": f"v0.{self.rng.randint(1, 9)}.0", "ref_type": "tag", "pusher_type": "user"}

    def ReleaseEvent(self, repo: _Repo, actor: _Account, ts: str) -> dict:
        tag = f"v{self.rng.randint(0, 3)}.{self.rng.randint(0, 20)}.{self.rng.randint(0, 9)}"
        release_id = self.w.object_id()
        return {
            "action": "published",
            "release": {
                "url": f"https://api.github.com/repos/{repo.name}/releases/{release_id}",
                "html_url": f"https://github.com/{repo.name}/releases/tag/{tag}",
                "id": release_id,
                "tag_name": tag,
                "target_commitish": "master",
                "name": tag,
                "draft": False,
                "author": _user(actor),
                "prerelease": False,
                "created_at": ts,
                "published_at": ts,
                "body": "",
            },
        }

    def GollumEvent(self, repo: _Repo, actor: _Account, ts: str) -> dict:
        page = self.rng.choice(("Home", "Installation", "FAQ", "Usage", "Contributing"))
        return {
            "pages": [
                {
                    "page_name": page,
                    "title": page,
                    "summary": None,
                    "action": "edited" if self.rng.random() < 0.8 else "created",
                    "sha": self.w.sha(),
                    "html_url": f"https://github.com/{repo.name}/wiki/{page}",
                }
            ]
        }

    def MemberEvent(self, repo: _Repo, actor: _Account, ts: str) -> dict:
        return {"member": _user(self.w.user()), "action": "added"}

    def CommitCommentEvent(self, repo: _Repo, actor: _Account, ts: str) -> dict:
        comment = self.comment(repo, actor, ts, "")
        comment.update({"position": None, "line": None, "path": None, "commit_id": self.w.sha()})
        return {"comment": comment}

    def PublicEvent(self, repo: _Repo, actor: _Account, ts: str) -> dict:
        return {}


#: Actors of owner-driven event types are the repository's owner this often.
_OWNER_TYPES = frozenset({"PushEvent", "CreateEvent", "DeleteEvent", "ReleaseEvent", "PublicEvent"})


def generate_events(
    seed: int = 1,
    start: str | datetime | float = DEFAULT_START,
    count: int | None = None,
    repos: int = DEFAULT_REPOS,
    *,
    rate: float = DEFAULT_RATE,
    users: int | None = None,
    zipf: float = 1.1,
    activity_zipf: float = 0.7,
    diurnal: float = 0.3,
) -> Iterator[dict]:
    """Invent GitHub Archive events; endless when ``count`` is None.

    The same arguments give the same events. ``start`` is the time of the first
    event (see :func:`parse_start`). Events arrive as a Poisson process of ``rate``
    events per simulated second on average, ``diurnal`` (0..1) making the day's
    peak (15:00 UTC) that much busier than average and its trough that much
    quieter; ``created_at`` has whole seconds and never decreases. Stars, forks
    and discussions go to ``repos`` repositories with Zipf popularity of exponent
    ``zipf`` (Zipf-Mandelbrot with a rank offset of 5: with the defaults the top 1%
    of repositories get about half of the stars, the favourite about 3%), whose top
    ranks are reshuffled a little every simulated hour; pushes and other owner
    activity follow a flatter Zipf of ``activity_zipf``. ``users`` (default
    ``2 * repos``) accounts act, some much more than others.
    """
    if repos < 1:
        raise ValueError("repos must be at least 1")
    if rate <= 0:
        raise ValueError("rate must be positive")
    if not 0 <= diurnal < 1:
        raise ValueError("diurnal must be in [0, 1)")
    rng = random.Random(seed)
    world = _World(rng, repos, users or max(10, 2 * repos), zipf, activity_zipf)
    payloads = _Payloads(world)
    now = parse_start(start)
    hour = int(now // 3600)
    event_id = 5_000_000_000 + rng.randrange(100_000_000)
    produced = 0
    while count is None or produced < count:
        if diurnal:
            phase = 2 * math.pi * ((now % 86_400) / 3600 - 9) / 24
            now += rng.expovariate(rate * (1 + diurnal * math.sin(phase)))
        else:
            now += rng.expovariate(rate)
        if int(now // 3600) != hour:
            hour = int(now // 3600)
            world.drift()
        kind = world.event_type()
        repo = world.repo(kind)
        if kind in _OWNER_TYPES and repo.org is None and rng.random() < 0.8:
            actor = repo.owner
        else:
            actor = world.user()
        created_at = format_created_at(now)
        event_id += 1 + (rng.random() < 0.2)
        event: dict[str, Any] = {
            "id": str(event_id),
            "type": kind,
            "actor": _actor(actor),
            "repo": {
                "id": repo.id,
                "name": repo.name,
                "url": f"https://api.github.com/repos/{repo.name}",
            },
            "payload": payloads.build(kind, repo, actor, created_at),
            "public": True,
            "created_at": created_at,
        }
        if repo.org is not None:
            event["org"] = _org(repo.org)
        yield event
        produced += 1
