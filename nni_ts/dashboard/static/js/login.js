// The login page: show the failure note when the server sent us back with ?failed=1.
if (new URLSearchParams(location.search).has('failed')) {
  document.getElementById('failed').hidden = false;
}
