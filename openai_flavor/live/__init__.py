"""GPT-Live, OpenAI's full-duplex speech API, as the ``openai`` flavor's second protocol.

``[openai] api = live`` selects it (openai_flavor/__init__.py picks the session class). What
differs from the Realtime API, and why each part is where it is:

* events.py: the wire, sans-IO: ``session.start``, caller audio, instructions, tool outputs;
  what the server's events carry (audio, transcripts, usage, delegated function calls);
* turns.py: the sans-IO core of a full-duplex call: when the model has yielded to the caller
  (rtpai then clears the audio it still holds), and when a goodbye has been said;
* conversation.py: one connection, from ``session.start`` to its end;
* session.py: :class:`LiveSession`, the Realtime session's connect/reconnect life with a
  GPT-Live conversation per connection;
* settings.py: the GPT-Live rows and :class:`LiveSettings`.

The WebSocket client, the watchdog, the reader, the reconnect back-off, the statistics, the
welcome/goodbye state and the tools are the Realtime flavor's, shared unchanged.
"""
