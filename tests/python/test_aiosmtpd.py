"""A real asyncio program on unixloop: aiosmtpd's SMTP server (Debian's
python3-aiosmtpd 1.4.3) driven by the standard library's blocking smtplib,
each test run on stock asyncio's loop and on unixloop's (the aloop
fixture), so that a difference in behaviour shows as one of the pair
failing.

aiosmtpd's Controller runs the server's loop in a thread of its own:
run_until_complete(create_server(...)) there, then run_forever; the main
thread stops it with call_soon_threadsafe(cancel_tasks), which stops the
loop and cancels every task (asyncio.all_tasks(loop)) from within it, and
the thread then closes the server (wait_closed) and the loop itself.  The
SMTP protocol is an asyncio.StreamReaderProtocol (StreamReader.readuntil,
StreamWriter.drain) with one task per connection; the idle timeout is a
loop.call_later handle that closes the transport.  STARTTLS is done by hand
on the loop's transport: transport.set_protocol(asyncio.sslproto.
SSLProtocol(...)), a buffered protocol, in the middle of a connection.
UnixSocketController serves over loop.create_unix_server.
"""
import os
import smtplib
import socket
import tempfile
import threading
import time

import pytest

pytest.importorskip(
    'aiosmtpd',
    reason='python3-aiosmtpd is not installed (make deps installs it)')
from aiosmtpd import controller as aiosmtpd_controller  # noqa: E402

WAIT = 10  # seconds: every blocking step gives up after this, not hangs
CLIENT = 'client.test'  # names given so neither side asks DNS (getfqdn)
SERVER = 'smtp.test'
SENDER = 'sender@example.org'
RECIPIENTS = ['one@example.org', 'two@example.net']
# The module of the transports each loop serves a connection with.
TRANSPORT = {'asyncio': 'asyncio.selector_events',
             'unixloop': 'unixloop._core'}


def message(tag, size):
    """About size bytes of CRLF lines, each numbered and tagged, so that a
    lost, repeated or reordered line shows; a third of them start with '.'
    and some are a lone '.' or '..', so a dot-stuffing slip shows too."""
    lines = ['Subject: {}\r\n\r\n'.format(tag).encode()]
    n = len(lines[0])
    i = 1
    while n < size:
        if i % 97 == 0:
            line = '.'
        elif i % 101 == 0:
            line = '..'
        else:
            line = '{}{} {:07d} {}'.format(
                '.' if i % 3 == 0 else '', tag, i, 'x' * (i % 190))
        line = line.encode() + b'\r\n'
        lines.append(line)
        n += len(line)
        i += 1
    return b''.join(lines)


class Recorder:
    """An aiosmtpd handler that keeps every message it is given; a message
    whose content contains b'FAIL' makes it raise."""

    def __init__(self):
        self.messages = []  # appended to in the loop's thread only

    async def handle_DATA(self, server, session, envelope):
        if b'FAIL' in envelope.content:
            raise ValueError('handler failed on purpose')
        self.messages.append({
            'peer': session.peer,
            'tls': session.ssl,
            'mail_from': envelope.mail_from,
            'rcpt_tos': list(envelope.rcpt_tos),
            'content': envelope.content,
            # whose transport: after STARTTLS, the one under sslproto's
            'transport': type(server._original_transport
                              or server.transport).__module__,
        })
        return '250 OK'


class Controller(aiosmtpd_controller.Controller):
    """aiosmtpd's threaded Controller on 127.0.0.1, at a free port that the
    kernel picks (the stock one wants a fixed port, 8025 by default)."""

    def __init__(self, handler, loop, **smtp_kwargs):
        super().__init__(handler, hostname='127.0.0.1', port=0, loop=loop,
                         server_hostname=SERVER, ready_timeout=WAIT,
                         **smtp_kwargs)

    async def _create_server(self):
        server = await super()._create_server()
        # start() then connects to self.port to make the server call its
        # protocol factory once.
        self.port = server.sockets[0].getsockname()[1]
        return server


def stop(controller):
    """controller.stop(), which joins the loop's thread with no timeout,
    bounded here: a loop that does not stop fails the test."""
    thread = controller._thread
    stopper = threading.Thread(target=controller.stop, daemon=True)
    stopper.start()
    stopper.join(WAIT)
    assert not stopper.is_alive(), 'controller.stop() did not return'
    assert not thread.is_alive()


def serve(aloop, handler, **smtp_kwargs):
    controller = Controller(handler, aloop, **smtp_kwargs)
    controller.start()
    return controller


def connect(controller, host='127.0.0.1'):
    return smtplib.SMTP(host, controller.port, local_hostname=CLIENT,
                        timeout=WAIT)


class UnixSMTP(smtplib.SMTP):
    """smtplib's client over a UNIX socket: the host is the socket's path."""

    def _get_socket(self, host, port, timeout):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(host)
        except BaseException:
            sock.close()
            raise
        return sock


def test_sendmail_reaches_handle_data_with_its_envelope(aloop):
    handler = Recorder()
    controller = serve(aloop, handler)
    try:
        body = message('one', 10000)
        with connect(controller) as client:
            assert client.sendmail(SENDER, RECIPIENTS, body) == {}
            peer = client.sock.getsockname()
    finally:
        stop(controller)
    assert handler.messages == [{
        'peer': peer,
        'tls': None,
        'mail_from': SENDER,
        'rcpt_tos': RECIPIENTS,
        'content': body,
        'transport': TRANSPORT[aloop.kind],
    }]
    assert aloop.is_closed()  # the controller's thread closed it


def test_large_dot_stuffed_message_arrives_intact(aloop):
    handler = Recorder()
    controller = serve(aloop, handler)
    try:
        body = message('big', 2 * 1024 * 1024 + 12345)
        assert body.count(b'\r\n.') > 5000
        with connect(controller) as client:
            client.sendmail(SENDER, RECIPIENTS[:1], body)
    finally:
        stop(controller)
    assert len(handler.messages) == 1
    assert handler.messages[0]['content'] == body


def test_many_messages_on_one_connection(aloop):
    handler = Recorder()
    controller = serve(aloop, handler)
    # Sizes around the transports' and StreamReader's buffer sizes.
    sizes = [10, 1000, 65535, 65536, 65537, 300000] * 3
    bodies = [message('m{}'.format(i), size) for i, size in enumerate(sizes)]
    try:
        with connect(controller) as client:
            for body in bodies:
                client.sendmail(SENDER, RECIPIENTS, body)
            peer = client.sock.getsockname()
    finally:
        stop(controller)
    assert [m['content'] for m in handler.messages] == bodies
    assert {m['peer'] for m in handler.messages} == {peer}


def test_client_threads_at_once_each_message_delivered_once(aloop):
    handler = Recorder()
    controller = serve(aloop, handler)
    threads, per_thread = 8, 5
    errors = []
    # All the clients connect before any sends, so the server holds 8
    # connections at once.
    barrier = threading.Barrier(threads, timeout=WAIT)

    def client_thread(t):
        try:
            with connect(controller) as client:
                barrier.wait()
                for i in range(per_thread):
                    client.sendmail(SENDER, RECIPIENTS,
                                    message('t{}-{}'.format(t, i), 20000 * i))
        except BaseException as e:
            errors.append((t, e))

    workers = [threading.Thread(target=client_thread, args=(t,), daemon=True)
               for t in range(threads)]
    try:
        for w in workers:
            w.start()
        for w in workers:
            w.join(WAIT)
        assert not any(w.is_alive() for w in workers), 'a client hung'
    finally:
        stop(controller)
    assert errors == []
    got = [m['content'] for m in handler.messages]
    assert len(got) == threads * per_thread
    for t in range(threads):
        # Exactly once each, and a connection's messages in its order.
        mine = [c for c in got if c.startswith(b'Subject: t%d-' % t)]
        assert mine == [message('t{}-{}'.format(t, i), 20000 * i)
                        for i in range(per_thread)]
    assert len({m['peer'] for m in handler.messages}) == threads


def test_starttls_required_then_accepted(aloop, tls_pair):
    # The TLS layer is asyncio's sslproto on the loop's transports.
    server_ctx, client_ctx = tls_pair
    handler = Recorder()
    controller = serve(aloop, handler, tls_context=server_ctx,
                       require_starttls=True)
    body = message('tls', 1024 * 1024)  # many TLS records, flow control
    try:
        # 'localhost' for the certificate's name; if it resolves to ::1
        # first, that is refused and smtplib goes on to 127.0.0.1.
        with connect(controller, host='localhost') as client:
            client.ehlo()
            assert client.has_extn('starttls')
            with pytest.raises(smtplib.SMTPSenderRefused) as refused:
                client.sendmail(SENDER, RECIPIENTS, b'plain\r\n')
            assert refused.value.smtp_code == 530
            assert client.starttls(context=client_ctx)[0] == 220
            client.sendmail(SENDER, RECIPIENTS, body)
            client.sendmail(SENDER, RECIPIENTS, b'second\r\n')
            version = client.sock.version()
            client.quit()
    finally:
        stop(controller)
    assert [m['content'] for m in handler.messages] == [body, b'second\r\n']
    tls = handler.messages[0]['tls']
    assert tls is not None
    assert tls['ssl_object'].version() == version
    # sslproto was put on the loop under test's own transport.
    assert handler.messages[0]['transport'] == TRANSPORT[aloop.kind]


def test_unix_socket_controller(aloop):
    handler = Recorder()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'smtp.sock')
        controller = aiosmtpd_controller.UnixSocketController(
            handler, unix_socket=path, loop=aloop, server_hostname=SERVER,
            ready_timeout=WAIT)
        controller.start()
        bodies = [message('unix', 100000), message('unix2', 10)]
        try:
            with UnixSMTP(path, local_hostname=CLIENT,
                          timeout=WAIT) as client:
                for body in bodies:
                    client.sendmail(SENDER, RECIPIENTS, body)
                assert client.sock.family == socket.AF_UNIX
        finally:
            stop(controller)
    assert [m['content'] for m in handler.messages] == bodies
    assert [m['rcpt_tos'] for m in handler.messages] == [RECIPIENTS] * 2
    assert handler.messages[0]['transport'] == TRANSPORT[aloop.kind]


def test_handler_exception_gives_500_and_serving_goes_on(aloop):
    handler = Recorder()
    controller = serve(aloop, handler)
    try:
        with connect(controller) as client:
            client.sendmail(SENDER, RECIPIENTS, b'before\r\n')
            with pytest.raises(smtplib.SMTPDataError) as failed:
                client.sendmail(SENDER, RECIPIENTS, b'FAIL\r\n')
            assert failed.value.smtp_code == 500
            assert b'handler failed on purpose' in failed.value.smtp_error
            # The same connection goes on (smtplib sent RSET), and so do
            # new ones.
            client.sendmail(SENDER, RECIPIENTS, b'after\r\n')
        with connect(controller) as client:
            client.sendmail(SENDER, RECIPIENTS, b'new connection\r\n')
    finally:
        stop(controller)
    assert [m['content'] for m in handler.messages] == [
        b'before\r\n', b'after\r\n', b'new connection\r\n']


def test_stop_with_clients_still_connected(aloop):
    handler = Recorder()
    controller = serve(aloop, handler)
    with connect(controller) as idle, connect(controller) as sending:
        idle.ehlo()
        # The second client is in the middle of DATA: its task waits in
        # StreamReader.readuntil.
        sending.ehlo()
        sending.mail(SENDER)
        sending.rcpt(RECIPIENTS[0])
        sending.putcmd('data')
        assert sending.getreply()[0] == 354
        sending.send(b'half a message\r\n')  # and never the end
        stop(controller)  # returns within WAIT, or the test fails
        assert aloop.is_closed()
        # The server's side of both connections was closed: each client
        # reads end of file (not a timeout).
        for client in (idle, sending):
            assert client.sock.recv(1024) == b''
    assert handler.messages == []
    # The fixture then checks that no fd is left open.


def test_idle_client_is_disconnected_after_the_timeout(aloop):
    timeout = 0.3
    handler = Recorder()
    controller = serve(aloop, handler, timeout=timeout)
    try:
        with connect(controller) as client:
            started = time.monotonic()
            client.ehlo()  # a command: the server re-arms its call_later
            # aiosmtpd 1.4.3's timeout closes the transport without a
            # reply; smtplib sees the end of the connection, not its own
            # socket timeout.
            with pytest.raises(smtplib.SMTPServerDisconnected) as gone:
                client.getreply()
            elapsed = time.monotonic() - started
            assert str(gone.value) == 'Connection unexpectedly closed'
            assert timeout - 0.05 <= elapsed < timeout + 3
        # The server itself goes on.
        with connect(controller) as client:
            client.sendmail(SENDER, RECIPIENTS, b'still serving\r\n')
    finally:
        stop(controller)
    assert [m['content'] for m in handler.messages] == [b'still serving\r\n']
