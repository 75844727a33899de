"""
The wire-form facts of a folder (store/wireform.py): which messages POP3
can send as they are stored, learned once and kept in a cache file.
"""

import os
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from twisted_mailhub.store import wireform


class WireLinesTests(SynchronousTestCase):
    def test_crlf_message_without_dot_lines_is_in_wire_form_with_its_line_count(self):
        self.assertEqual(wireform.wire_lines(b"Subject: a\r\n\r\nbody. with a dot\r\n"), 3)

    def test_message_that_needs_any_change_on_the_wire_is_not(self):
        for data in (
            b"Subject: a\r\n\r\n.starts with a dot\r\n",  # byte-stuffing
            b".Subject: a\r\n\r\nx\r\n",  # the first line too
            b"Subject: a\n\nbare lf\n",  # line ends
            b"Subject: a\r\n\r\nmixed\nends\r\n",
            b"Subject: a\r\n\r\na bare\rCR\r\n",  # sent as a line end
            b"Subject: a\r\n\r\nends in a CR\r\n\r",
            b"Subject: a\r\n\r\nno line end at the end",
            "Subject: Grüße\r\n\r\nx\r\n".encode("utf-8"),  # an 8-bit header (RFC 6856 downgrade)
            b"",
        ):
            self.assertIsNone(wireform.wire_lines(data), data)

    def test_eight_bit_body_under_an_ascii_header_is_in_wire_form(self):
        self.assertEqual(wireform.wire_lines("Subject: a\r\n\r\nGrüße\r\n".encode("utf-8")), 3)


class WireSizeTests(SynchronousTestCase):
    def test_size_on_the_wire_counts_every_line_end_as_crlf(self):
        self.assertEqual(wireform.wire_size(b"a\r\nb\r\n"), 6)
        self.assertEqual(wireform.wire_size(b"a\nb\n"), 6)
        self.assertEqual(wireform.wire_size(b"a\rb\r\nc\n"), 9)
        self.assertEqual(wireform.wire_size(b"a\n\rb"), 6)  # LF then CR: two line ends
        self.assertEqual(wireform.wire_size(b".x\r\n"), 4)  # stuffing is not counted
        self.assertEqual(wireform.wire_size(b""), 0)


class WireFormsTests(SynchronousTestCase):
    def setUp(self):
        self.directory = tempfile.mkdtemp()
        self.addCleanup(__import__("shutil").rmtree, self.directory, True)
        os.mkdir(os.path.join(self.directory, "tmp"))

    def test_facts_learned_and_saved_are_known_to_the_next_process(self):
        forms = wireform.WireForms(self.directory)
        self.assertEqual(forms.learn("a", b"x\r\n"), 1)
        self.assertIsNone(forms.learn("b", b".x\r\n"))
        forms.learn("gone", b"y\r\n")
        forms.save(["a", "b"])
        again = wireform.WireForms(self.directory)
        self.assertEqual(again.lines_of("a", b"x\r\n"), 1)
        self.assertIsNone(again.lines_of("b", b".x\r\n"))
        self.assertEqual(sorted(again.known), ["a", "b"])
        self.assertEqual(os.listdir(os.path.join(self.directory, "tmp")), [])

    def test_a_fact_holds_only_for_the_length_it_was_learned_at(self):
        forms = wireform.WireForms(self.directory)
        scans = []
        real = wireform.wire_lines
        self.patch(wireform, "wire_lines", lambda data: scans.append(data) or real(data))
        self.assertEqual(forms.lines_of("a", b"x\r\n"), 1)
        self.assertEqual(forms.lines_of("a", b"x\r\n"), 1)
        self.assertIsNone(forms.lines_of("a", b".xy\r\n"))
        self.assertIsNone(forms.lines_of("a", b".xy\r\n"))
        self.assertEqual(forms.lines_of("a", b"x\r\ny\r\n"), 2)
        self.assertEqual(scans, [b"x\r\n", b".xy\r\n", b"x\r\ny\r\n"])

    def test_the_size_on_the_wire_of_every_message_is_known_and_kept(self):
        forms = wireform.WireForms(self.directory)
        self.assertIsNone(forms.size_of("a"))
        forms.learn("a", b"x\r\n")
        forms.learn("b", b"lf\nonly\n")
        forms.learn("c", b".dot\r\n")
        forms.save(["a", "b", "c"])
        again = wireform.WireForms(self.directory)
        self.assertEqual([again.size_of(k) for k in "abc"], [3, 10, 6])
        self.assertIsNone(again.lines_of("b", b"lf\nonly\n"))

    def test_sizes_on_the_wire_correct_only_the_messages_learned_to_differ(self):
        forms = wireform.WireForms(self.directory)
        forms.learn("a", b"x\r\n")
        forms.learn("b", b"lf\nonly\n")
        forms.learn("c", b".dot\r\n")
        forms.save(["a", "b", "c"])
        again = wireform.WireForms(self.directory)  # another process: from the file
        sizes = [3, 8, 6, 99]
        again.sizes_on_the_wire(["a", "b", "c", "new"], sizes)
        self.assertEqual(sizes, [3, 10, 6, 99])  # "new": nothing known, the store's count
        again.learn("b", b"lf\r\nonly\r\n")  # rewritten with CRLF since
        sizes = [3, 10]
        again.sizes_on_the_wire(["a", "b"], sizes)
        self.assertEqual(sizes, [3, 10])

    def test_a_cache_of_the_first_version_is_learned_again(self):
        import marshal

        with open(os.path.join(self.directory, wireform.FILE), "wb") as f:
            f.write(marshal.dumps((1, {"b": -1 - 8})))
        self.assertEqual(wireform.WireForms(self.directory).known, {})

    def test_nothing_is_written_when_nothing_was_learned(self):
        wireform.WireForms(self.directory).save(["a"])
        self.assertFalse(os.path.exists(os.path.join(self.directory, wireform.FILE)))

    def test_a_damaged_cache_file_is_ignored_and_replaced(self):
        path = os.path.join(self.directory, wireform.FILE)
        for junk in (b"", b"\x00garbage", b"\xe9\x01\x00\x00\x00"):
            with open(path, "wb") as f:
                f.write(junk)
            forms = wireform.WireForms(self.directory)
            self.assertEqual(forms.known, {})
            forms.learn("a", b"x\r\n")
            forms.save(["a"])
            self.assertEqual(wireform.WireForms(self.directory).lines_of("a", b"x\r\n"), 1)

    def test_a_cache_that_cannot_be_written_is_left_alone(self):
        forms = wireform.WireForms(os.path.join(self.directory, "missing"))
        forms.learn("a", b"x\r\n")
        forms.save(["a"])  # no tmp/ to write in: logged, not raised
        self.assertEqual(forms.lines_of("a", b"x\r\n"), 1)
