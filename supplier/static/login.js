document.getElementById("next").value = new URLSearchParams(location.search).get("next") || "/";
