"""Names of the keys this app keeps in ``st.session_state`` (widget keys bound to URL parameters are
named by their parameter instead: see ``ui.settings``)."""

SESSION_ID = "session_id"  # this browser session's id (also ?sid= in the URL)
GUIDED = "_guided"  # the URL parameters a guided link locked
CURRENT_RUN = "current_run"  # the run the Distill page shows
URL_RUN_SEEN = "_url_run_seen"  # the ?run= the Distill page has already followed
UPLOAD_MESSAGE = "_upload_msg"  # what became of the last upload
PROBE = "_probe"  # the config whose steps the user asked to time
CONFIRM_DELETE = "_confirm_delete"  # runs awaiting a second click on Delete
INIT_GROUP = "init_group"  # the runs the Initializations page started together
ACTIVE_SEEN = "_active_seen"  # runs seen active, so the page reruns once when one ends
UPLOAD = "upload"  # the file uploader
SHARE_UPLOAD = "share_upload"  # the next upload goes to every session
