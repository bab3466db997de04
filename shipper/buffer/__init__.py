"""The disk buffer (write-ahead log) between decode and the sinks.

On disk, under ``<data_dir>/wal/``::

    00000000000000000007.seg            segments: header + records (segment.py, record.py)
    00000000000000000007.seg.4096.quarantine
                                        corrupt bytes found at offset 4096 of segment 7 (recovery.py)
    cursors/<sink id>.json              each sink's acknowledged position (cursor.py)
    epoch                               the WAL's lifetime (recovery.py)
    head, layout                        what the writer publishes for readers: the accepted
                                        position, the segments and their ends (published.py)
    wake/                               wake-up sockets between the writer and readers in
                                        other processes (wake.py)

Invariants: records are only ever appended, to the newest segment; a cursor only moves forward; a
segment is deleted only when every configured sink's cursor is past its end; a reader never reads
past the accepted position the writer published. The owner modules
document each format and ``recovery.py`` what start-up does with damage.
"""
