"""
The plain text of HTML mail (L{sanitize.html_text}), which a reply quotes
and a forward carries when a message has no text/plain part.
"""

from twisted_mailhub.web.sanitize import html_text


def test_paragraphs_lists_breaks_and_rows_become_lines():
    assert html_text("<p>one</p><p>two<br>three</p><ul><li>a</li><li>b</li></ul><table><tr><td>x</td><td>y</td></tr></table>") == "one\n\ntwo\nthree\n\n- a\n- b\n\nx y"


def test_white_space_is_folded_as_a_browser_shows_it_but_pre_keeps_its_own():
    assert html_text("<div>  many\n   spaces <b>and</b>\tbold </div><pre>a\n  b</pre>") == "many spaces and bold\na\n  b"


def test_a_web_links_address_follows_its_words_and_other_schemes_are_left_out():
    assert html_text('<p>see <a href="https://example.org/x">the plan</a> or <a href="javascript:alert(1)">this</a></p>') == "see the plan <https://example.org/x> or this"


def test_nothing_of_scripts_styles_or_forms_is_kept():
    assert html_text("<style>p { color: red }</style><p>hi</p><script>steal()</script><form><input value=pw><textarea>t</textarea></form>") == "hi"


def test_entities_are_decoded_and_markup_in_text_stays_text():
    assert html_text("<p>&lt;b&gt; &amp; caf&eacute;</p>") == "<b> & café"


def test_what_follows_a_dropped_element_with_other_tags_inside_is_kept():
    # An <svg> or a <form> holding tags of its own once swallowed the rest of
    # the message: the text skipped every start tag inside it but counted
    # only the dropped elements' end tags (the rendering never did).
    assert html_text("<p>Hello <svg><g><circle/></g></svg> world</p><p>after</p>") == "Hello world\n\nafter"
    assert html_text("<form><b>in</b><span>form</span></form><p>after form</p>") == "after form"
