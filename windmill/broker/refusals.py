"""RabbitMQ's refusals of a connection in words, with the fix: the broker says why it closed a connection during
the handshake in a reply code and text (`(403) 'ACCESS_REFUSED - Login was refused …'`), which pika hands on as is.
Pure: the text in, a sentence out."""

from __future__ import annotations

import re

# The reply the broker closed the connection with, as pika's ConnectionClosedByBroker prints it.
_REPLY = re.compile(r"\((?P<code>\d+)\) ['\"](?P<text>.*?)['\"]?$")
_LOGIN = "WINDMILL_AMQP_URL, or QUEUE_USER with QUEUE_PASSWORD or WINDMILL_AMQP_PASSWORD_FILE"


def explain_refusal(description: str) -> str | None:
    """A sentence for a refusal whose cause is known, keeping the broker's own words; None for any other error.
    `description`: windmill.broker.rabbitmq.describe_error's."""
    reply = _REPLY.search(description)
    if reply is None:
        return None
    code, text = reply["code"], reply["text"]
    if code == "403" and "ACCESS_REFUSED" in text and "Login was refused" in text:
        return f"the user name or password is wrong ({code} ACCESS_REFUSED; they come from {_LOGIN})"
    if code == "530" and (missing := re.search(r"vhost (\S+) not found", text)):
        return (f"virtual host {missing[1]!r} does not exist ({code} NOT_ALLOWED): create it (`rabbitmqctl add_vhost "
                f"{missing[1]}`) or correct the URL's path (`/%2F` is the default virtual host)")
    if code == "530" and (denied := re.search(r"access to vhost '([^']*)' refused for user '([^']*)'", text)):
        return (f"user {denied[2]!r} may not use virtual host {denied[1]!r} ({code} NOT_ALLOWED): grant it "
                f"(`rabbitmqctl set_permissions -p {denied[1]} {denied[2]} '.*' '.*' '.*'`)")
    return None
