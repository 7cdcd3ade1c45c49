"""`lowmem ui`: the web page. `server` loads the model once and serves `app`'s page; `service` runs
one edit at a time on the device and stops one on request; `forms` turns the page's fields into an
`EditSpec`; `pictures` draws the box canvas, the red-box preview and the regenerated region;
`components` holds the two page components gradio lacks. Gradio is imported by `app`, `components`
and `server.launch` only."""
