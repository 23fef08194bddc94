"""Per-partition state of the star leaders example: a 24-hour rolling window
of stars per repository, in hourly buckets, and the partition's top 10 with
the last 3 fork / pull-request events of each leader.

Written in the Python 2 style of the original example (``iteritems``,
``xrange``, ``has_key``): the runner's compatibility layer makes it run on
Python 3 unchanged.
"""

from datetime import datetime, timedelta

WINDOW_HOURS = 24
TOP = 10
RECENT = 3
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def event_hour(event):
    """The hour an event belongs to (its ``created_at`` truncated)."""
    created = datetime.strptime(event["created_at"], TIME_FORMAT)
    return created.replace(minute=0, second=0)


def compact_event(event):
    """The few fields of an event shown with a leader."""
    actor = event.get("actor") or {}
    if isinstance(actor, dict):
        actor = actor.get("login")
    return {
        "id": event.get("id"),
        "type": event["type"],
        "actor": actor,
        "created_at": event["created_at"],
    }


def rank_key(item):
    """Stars descending, then repository name."""
    repo, stars = item
    return (-stars, repo)


class RepoMetadata(object):
    """Stars per repository over the last 24 hours, and the current leaders."""

    def __init__(self):
        self.buckets = {}       # hour -> {repo: stars in that hour}
        self.totals = {}        # repo -> stars in the window
        self.current_hour = None
        self.leaders = []       # [(repo, stars)], best first
        self.recent = {}        # leader repo -> its last RECENT events
        self.published = []     # the leaders last returned by update()

    def _roll_to(self, hour):
        """Move the window's end to ``hour``; True when stars left the window."""
        self.current_hour = hour
        oldest = hour - timedelta(hours=WINDOW_HOURS - 1)
        expired = [h for h in self.buckets if h < oldest]
        for h in expired:
            for repo, stars in self.buckets.pop(h).iteritems():
                left = self.totals[repo] - stars
                if left:
                    self.totals[repo] = left
                else:
                    del self.totals[repo]
        return bool(expired)

    def _rank_all(self):
        ranked = sorted(self.totals.iteritems(), key=rank_key)[:TOP]
        self._set_leaders(ranked)

    def _set_leaders(self, ranked):
        names = set(repo for repo, _ in ranked)
        for repo in list(self.recent.keys()):
            if repo not in names:
                del self.recent[repo]
        self.leaders = ranked

    def _star(self, repo):
        stars = self.totals[repo]
        ranked = [item for item in self.leaders if item[0] != repo]
        if len(ranked) == len(self.leaders) and len(ranked) >= TOP:
            if rank_key((repo, stars)) > rank_key(ranked[-1]):
                return False
        ranked.append((repo, stars))
        ranked.sort(key=rank_key)
        self._set_leaders(ranked[:TOP])
        return True

    def update(self, event):
        """Apply one event; the new leaders when they changed, else None."""
        hour = event_hour(event)
        changed = False
        if self.current_hour is None or hour > self.current_hour:
            changed = self._roll_to(hour)
            if changed:
                self._rank_all()
        if hour <= self.current_hour - timedelta(hours=WINDOW_HOURS):
            return self._publish() if changed else None
        repo = event["repo"]["name"]
        if event["type"] == "WatchEvent":
            bucket = self.buckets.setdefault(hour, {})
            bucket[repo] = bucket.get(repo, 0) + 1
            self.totals[repo] = self.totals.get(repo, 0) + 1
            changed = self._star(repo) or changed
        elif dict(self.leaders).has_key(repo):
            events = self.recent.setdefault(repo, [])
            events.append(compact_event(event))
            del events[:-RECENT]
            changed = True
        return self._publish() if changed else None

    def _publish(self):
        """The leaders if they differ from what was last published, else None."""
        leaders = self.snapshot()
        if leaders == self.published:
            return None
        self.published = leaders
        return [dict(leader, recent_events=[dict(e) for e in leader["recent_events"]])
                for leader in leaders]

    def snapshot(self):
        """The leaders as plain data (fresh objects, safe to keep)."""
        leaders = []
        for rank in xrange(len(self.leaders)):
            repo, stars = self.leaders[rank]
            leaders.append({
                "repo": repo,
                "stars": stars,
                "recent_events": [dict(e) for e in self.recent.get(repo, [])],
            })
        return leaders
