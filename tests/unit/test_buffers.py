"""The Spool between a fast upstream and a slow client: every byte once, in order."""

from proxy.server.buffers import CHUNK, Spool


class Transport:
    """What a Spool needs of the client's transport: it records what it is given."""

    def __init__(self) -> None:
        self.out = bytearray()

    def write(self, data) -> None:
        self.out += data

    def is_closing(self) -> bool:
        return False


class Client:
    def __init__(self) -> None:
        self.transport = Transport()
        self.write_paused = True


def test_a_reused_file_sends_only_what_this_fill_wrote():
    client = Client()
    spool = Spool(client, memory_limit=CHUNK, file_limit=1 << 30)
    first = bytes(range(256)) * (4 * CHUNK // 256)
    spool.push(first[:CHUNK])  # memory
    spool.push(first[CHUNK:])  # past the memory limit: the file, 3 * CHUNK bytes
    client.write_paused = False
    spool.pump()
    assert client.transport.out == first and not spool.pending
    # The file is now reused from its start; a smaller fill must not bring back the rest.
    client.write_paused = True
    spool.push(b"second")
    client.write_paused = False
    spool.pump()
    assert client.transport.out == first + b"second"
    assert spool.pending == 0


def test_bytes_come_out_in_the_order_they_went_in():
    client = Client()
    spool = Spool(client, memory_limit=10, file_limit=1 << 20)
    pieces = [b"%05d|" % i for i in range(2000)]
    for i, piece in enumerate(pieces):
        client.write_paused = i % 7 != 0  # the client takes some, then falls behind again
        if not client.write_paused:
            spool.pump()
        spool.push(piece)
    client.write_paused = False
    spool.pump()
    assert bytes(client.transport.out) == b"".join(pieces)


def test_when_flushed_waits_for_the_last_byte():
    client = Client()
    spool = Spool(client, memory_limit=4, file_limit=100)
    spool.push(b"abcdefgh")
    done = []
    spool.when_flushed(lambda: done.append(True))
    assert not done
    client.write_paused = False
    spool.pump()
    assert done == [True] and client.transport.out == b"abcdefgh"
