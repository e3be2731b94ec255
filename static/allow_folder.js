// Allow this folder (templates/_allow_folder_button.html): posts the folder, then fires `folder-allowed` on the
// body, so that a form or list that showed the refusal asks again. The request is the body's, not the button's: a
// form check that answers while it is on its way replaces the button, and htmx drops a replaced element's
// handlers; the form must still ask again.
function allowFolder(folder) {
  return htmx.ajax("POST", "/allowed-folders", {source: document.body, values: {path: folder}, swap: "none"})
    .then(function () { htmx.trigger(document.body, "folder-allowed"); });
}
