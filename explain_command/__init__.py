"""The flows of ``explain.py``, one module per kind of task.

* :mod:`explain_command.common` -- the command's error and the files it reads;
* :mod:`explain_command.ranking` -- re-ID and retrieval: a query and its top-k ranked images;
* :mod:`explain_command.episodes` -- few-shot: queries against their predicted class's prototype;
* :mod:`explain_command.curves` -- re-ID and retrieval: the queries' deletion / insertion curves.

They draw with :mod:`cama.viz` and take references from :mod:`cama.references`, as the callbacks do.
"""
