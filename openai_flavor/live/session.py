"""One call's GPT-Live session: the Realtime session's life, a GPT-Live conversation per
connection.

What outlives a connection is the same as for Realtime and handled by the same code
(:class:`~openai_flavor.session.RealtimeSession`): the statistics, the welcome and the
hang-up, failures to tell the model, the back-off, the reconnect cue; a loss (the duration
limit, a dropped link, a watchdog bound) reconnects with a recap, a fatal one ends the call.
Only the credentials differ, and LiveSettings gives them: the provider's key header and no
beta header, on a URL without a query.
"""

from __future__ import annotations

from openai_flavor.live.conversation import LiveConversation
from openai_flavor.session import RealtimeSession


class LiveSession(RealtimeSession):
    conversation_class = LiveConversation
